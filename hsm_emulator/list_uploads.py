"""The address list calls of :class:`hsm_emulator.Hsm` (role
:class:`~hsm_emulator.client.HsmAddressLists`): upload a list in chunks, finish it, read
it. Each runs under the store's lock in one transaction with its audit entry, like every
HSM operation; a refused chunk changes nothing. Why no approval is needed and what
bounds hold: :mod:`hsm_emulator.address_lists`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .address_lists import AddressListInfo
from .boundary import Boundary


class AddressListCalls:
    """Begin, add, finish, discard and read address lists (audited)."""

    def __init__(self, boundary: Boundary) -> None:
        self._b = boundary
        self._lists = boundary.lists

    def address_list_begin(self) -> AddressListInfo:
        event: dict[str, Any] = {"op": "list.begin"}

        def begin() -> AddressListInfo:
            info = self._lists.begin(self._b.clock.now())
            event["upload"] = info.upload_id
            return info

        with self._b.locked():
            return self._b.audited(event, begin)

    def address_list_add(self, upload_id: str, index: int,
                         addresses: Sequence[str]) -> AddressListInfo:
        count = len(addresses) if isinstance(addresses, list | tuple) else None
        event = {"op": "list.add", "upload": upload_id, "index": index, "count": count}
        with self._b.locked():
            return self._b.audited(
                event, lambda: self._lists.add(upload_id, index, addresses))

    def address_list_finish(self, upload_id: str) -> AddressListInfo:
        event: dict[str, Any] = {"op": "list.finish", "upload": upload_id}

        def finish() -> AddressListInfo:
            info = self._lists.finish(upload_id)
            event.update(digest=info.digest, size=info.size)
            return info

        with self._b.locked():
            return self._b.audited(event, finish)

    def address_list_discard(self, upload_id: str) -> None:
        with self._b.locked():
            self._b.audited({"op": "list.discard", "upload": upload_id},
                            lambda: self._lists.discard(upload_id))

    def address_list_info(self, list_id: str) -> AddressListInfo:
        with self._b.locked():
            return self._lists.info(list_id)


class AddressListRole:
    """The address list calls as :class:`hsm_emulator.Hsm` methods, delegated to its
    :class:`AddressListCalls` (``lists``): one role's delegates kept beside the role."""

    lists: AddressListCalls

    def address_list_begin(self) -> AddressListInfo:
        return self.lists.address_list_begin()

    def address_list_add(self, upload_id: str, index: int,
                         addresses: Sequence[str]) -> AddressListInfo:
        return self.lists.address_list_add(upload_id, index, addresses)

    def address_list_finish(self, upload_id: str) -> AddressListInfo:
        return self.lists.address_list_finish(upload_id)

    def address_list_discard(self, upload_id: str) -> None:
        self.lists.address_list_discard(upload_id)

    def address_list_info(self, list_id: str) -> AddressListInfo:
        return self.lists.address_list_info(list_id)
