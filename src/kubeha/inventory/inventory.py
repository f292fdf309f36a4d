"""What an inventory gives kubeha: the cluster, and how to reach its hosts."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kubeha.model import Cluster


class SshDefaults(BaseModel):
    """How kubeha logs in to the hosts, unless a host says otherwise (Host.ssh_user, ssh_port, ssh_key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str = Field(default="root", min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    key_file: Path | None = None  # None: whatever ssh would use (agent, ~/.ssh/id_*)
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts
    sudo: bool = False  # run commands through sudo (for a user other than root)


class Inventory(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: Cluster
    ssh: SshDefaults = SshDefaults()
    # what an importer could not carry over and the operator should check; never written out
    notes: tuple[str, ...] = ()

    def warnings(self) -> tuple[str, ...]:
        """What is legal but not recommended, one line each."""
        members = len(self.cluster.etcd_members)
        if members % 2 == 0:
            return (
                f"etcd has {members} members: an even count tolerates no more failures than "
                f"{members - 1} and needs a larger quorum ({members // 2 + 1}); use an odd count",
            )
        return ()
