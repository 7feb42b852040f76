"""``/v1/address-lists``: allowlists too large for a policy, uploaded in chunks.

A key administrator begins an upload, puts its chunks (at most 5,000 addresses each, so
a chunk stays far under the 1 MiB body limit) by index - a chunk put again under its
index is a retry and changes nothing - and finishes it; the HSM answers the list's digest
(SHA-256 of the sorted, normalised set: :mod:`hsm_emulator.address_lists`), which a policy
or a tier configuration then names (``"destinations": {"list": digest}``; tiers:
``"allowlist": digest``). Uploading changes no policy, so it is not approved; binding the
list into a policy is (``POST /v1/key``, ``/v1/modify``, ``/v1/wallets``). The HSM keeps
lists, not the broker: this route only relays, and the HSM bounds what an upload may hold.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from approvals_app.deps import AnyRole, HsmDep, KeyAdmin
from approvals_app.responses import AddressListPublic
from approvals_app.schemas import AddressChunk
from hsm_emulator.address_lists import AddressListInfo

router = APIRouter(prefix="/v1", tags=["address lists"])

#: An upload's id (FastAPI copies an ``Annotated`` parameter per route; a shared
#: ``Path()`` default would carry the first route's name to the others).
UploadId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="the upload's id")]


def _public(info: AddressListInfo) -> AddressListPublic:
    return AddressListPublic(uploadId=info.upload_id, size=info.size, chunks=info.chunks,
                             digest=info.digest, finished=info.finished)


@router.post("/address-lists", status_code=201)
def begin_upload(hsm: HsmDep, _who: KeyAdmin) -> AddressListPublic:
    """Begin an upload (the HSM holds a few unfinished ones at a time)."""
    return _public(hsm.address_list_begin())


@router.put("/address-lists/{upload_id}/chunks/{index}")
def put_chunk(body: AddressChunk, hsm: HsmDep, _who: KeyAdmin,
              upload_id: UploadId,
              index: Annotated[int, Path(ge=0, le=1_000_000)]) -> AddressListPublic:
    """Chunk ``index`` (0, 1, ...: the next one, or one already put with the same set)."""
    return _public(hsm.address_list_add(upload_id, index, body.addresses))


@router.post("/address-lists/{upload_id}/finish")
def finish_upload(hsm: HsmDep, _who: KeyAdmin, upload_id: UploadId
                  ) -> AddressListPublic:
    """Close the upload: its set becomes the list of its digest (finishing again answers
    the same list)."""
    return _public(hsm.address_list_finish(upload_id))


@router.delete("/address-lists/{list_id}")
def discard_upload(hsm: HsmDep, _who: KeyAdmin, list_id: UploadId) -> AddressListPublic:
    """Drop an unfinished upload (``list_id``: its upload id) and its chunks; a finished
    list is never removed here. Answers the upload as it was, marked ``discarded`` (as
    the other DELETE routes answer their resource). (One path parameter name with
    ``GET``: one resource.)"""
    was = hsm.address_list_info(list_id)
    hsm.address_list_discard(list_id)
    return _public(was).model_copy(update={"discarded": True})


@router.get("/address-lists/{list_id}")
def read_list(hsm: HsmDep, _who: AnyRole,
              list_id: Annotated[str, Path(pattern=r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$",
                                           description="a list's digest or an upload's id")],
              ) -> AddressListPublic:
    """A finished list by digest (its size), or an upload's progress by id."""
    return _public(hsm.address_list_info(list_id))
