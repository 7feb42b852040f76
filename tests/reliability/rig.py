"""What a kill loop runs on: the cluster, and for transfers the local nodes, the HSM's
test clock, the chains' pace and the transfer invariants - started in order, stopped in
reverse, whatever failed in between."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from chains.base import Chain
from chains.solana.client import SolanaRpcClient
from custody.localnets import ETH_CHAIN_ID, LocalNets

from .chain_btc import BtcChecks
from .chain_eth import EthChecks
from .chain_sol import SolChecks
from .chainbeat import ChainBeat
from .cluster import Cluster
from .hsmtime import HsmTime
from .lanes import chains_for, lanes_for
from .traffic import Desk
from .transfer_checks import ChainCheck, TransferChecks
from .transfers import TransferDesk


class Rig:
    def __init__(self, db: str, work: Path, chain: str, seed: int) -> None:
        """``chain``: a lane name or ``all``; empty for sign requests only."""
        self.db, self.work, self.seed = db, work, seed
        self.lanes = lanes_for(chain) if chain else []
        self.nets: LocalNets | None = None
        self.clock: HsmTime | None = None
        self.beat: ChainBeat | None = None
        self.checks: TransferChecks | None = None
        self._cluster: Cluster | None = None

    @property
    def cluster(self) -> Cluster:
        assert self._cluster is not None
        return self._cluster

    def __enter__(self) -> Rig:
        try:
            env: dict[str, str] = {}
            if self.lanes:
                self.nets = LocalNets(self.work / "nets", chains=chains_for(self.lanes)).start()
                env = _node_env(self.nets)
                self.clock = HsmTime(self.work / "hsm.clock").start()
            self._cluster = Cluster(self.db, workdir=self.work, env=env,
                                    clock_file=None if self.clock is None else self.clock.path)
            self._cluster.start_all()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def transfers(self, desk: Desk) -> TransferDesk | None:
        """The funded wallets, their invariants and the chains' pace; None without lanes."""
        if self.nets is None or self.clock is None:
            return None
        tdesk = TransferDesk(desk, self.nets, self.lanes, self.seed, self.clock)
        tdesk.setup()
        nets = self.nets
        checks: dict[str, ChainCheck] = {}
        for chain, funding in tdesk.wallets.items():
            if chain == Chain.ETHEREUM:
                assert nets.eth is not None
                checks[chain] = EthChecks(nets.eth, funding)
            elif chain == Chain.BITCOIN:
                assert nets.btc_rpc is not None
                checks[chain] = BtcChecks(nets.btc_rpc, funding)
            else:
                assert nets.sol is not None
                checks[chain] = SolChecks(SolanaRpcClient(nets.sol.url), funding)
        self.checks = TransferChecks(tdesk, checks)
        self.beat = ChainBeat(nets, self.seed).start()
        return tdesk

    def beat_stats(self) -> dict[str, Any]:
        b = self.beat
        return {} if b is None else {"btc_blocks": b.blocks, "sol_blockhashes": b.blockhashes}

    def close(self) -> None:
        if self.beat is not None:
            self.beat.stop()
        if self._cluster is not None:
            self._cluster.close()
        if self.clock is not None:
            self.clock.stop()
        if self.nets is not None:
            self.nets.stop()


def _node_env(nets: LocalNets) -> dict[str, str]:
    """The API's and worker's settings for the nodes that run."""
    rpc = nets.endpoints().rpc
    env = {f"CUSTODY_{c.name}_RPC": rpc[c] for c in Chain if rpc.get(c)}
    if nets.eth is not None:
        env["CUSTODY_ETHEREUM_CHAIN_ID"] = str(ETH_CHAIN_ID)
    return env
