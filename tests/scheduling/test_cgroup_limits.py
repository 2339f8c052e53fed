"""The memory and CPU limits a job or container sets, read from the process's own cgroup.

`apptainer run --cleanenv` drops SLURM_MEM_PER_NODE, so inside a job the cgroup is the only
word on the budget; it lives at the path /proc/self/cgroup names, not at the mount's root.
Each test builds a fake /sys/fs/cgroup and /proc/self/cgroup as the kernel lays them out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_app.run.resources import (
    Cgroups,
    cpu_allocation,
    memory_allocation,
    plan_budget,
    plan_memory,
)

GIB = 2**30
V1_UNLIMITED = "9223372036854771712"
JOB = "system.slice/slurmstepd.scope/job_42"  # SLURM's cgroup v2 layout
V1_JOB = "slurm/uid_1000/job_42"  # SLURM's cgroup v1 layout


def tree(tmp_path: Path, proc: str, files: dict[str, str]) -> Cgroups:
    """A fake cgroup mount (`files`: path under it -> content) and /proc/self/cgroup."""
    root = tmp_path / "sys" / "fs" / "cgroup"
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    (tmp_path / "proc-cgroup").write_text(proc)
    return Cgroups(root=root, proc=tmp_path / "proc-cgroup")


def test_v2_the_job_limit_above_the_step_applies(tmp_path):
    cgroups = tree(
        tmp_path,
        f"0::/{JOB}/step_0/user/task_0\n",
        {
            "memory.max": "max",  # the root has no file in real v2; "max" must not count
            f"{JOB}/memory.max": str(6 * GIB),
            f"{JOB}/step_0/memory.max": "max",
            f"{JOB}/step_0/user/task_0/memory.max": "max",
            f"{JOB}/cpu.max": "300000 100000",
            f"{JOB}/step_0/cpu.max": "max 100000",
        },
    )
    limit, where = cgroups.memory_limit()
    assert limit == 6 * GIB and where.parent.name == "job_42"
    assert cgroups.cpu_quota()[0] == 3.0


def test_v1_memory_and_cpu_controllers(tmp_path):
    proc = (
        f"12:pids:/{V1_JOB}/step_0\n"
        f"4:memory:/{V1_JOB}/step_0\n"
        f"3:cpu,cpuacct:/{V1_JOB}/step_0\n"
        "1:name=systemd:/\n"
        "0::/\n"
    )
    cgroups = tree(
        tmp_path,
        proc,
        {
            "memory/memory.limit_in_bytes": V1_UNLIMITED,
            f"memory/{V1_JOB}/memory.limit_in_bytes": str(2 * GIB),
            f"memory/{V1_JOB}/step_0/memory.limit_in_bytes": V1_UNLIMITED,
            f"cpu,cpuacct/{V1_JOB}/cpu.cfs_quota_us": "200000",
            f"cpu,cpuacct/{V1_JOB}/cpu.cfs_period_us": "100000",
            f"cpu,cpuacct/{V1_JOB}/step_0/cpu.cfs_quota_us": "-1",
            f"cpu,cpuacct/{V1_JOB}/step_0/cpu.cfs_period_us": "100000",
        },
    )
    assert cgroups.memory_limit()[0] == 2 * GIB
    assert cgroups.cpu_quota()[0] == 2.0


def test_a_container_mounting_only_its_own_cgroup(tmp_path):
    """The path /proc names is not under the mount (no cgroup namespace): the mount is it."""
    cgroups = tree(tmp_path, "0::/docker/0123abcd\n", {"memory.max": str(3 * GIB)})
    assert cgroups.memory_limit()[0] == 3 * GIB


def test_no_limit_anywhere(tmp_path):
    cgroups = tree(
        tmp_path, "4:memory:/user.slice\n0::/user.slice\n", {
            "memory/memory.limit_in_bytes": V1_UNLIMITED,
            "memory/user.slice/memory.limit_in_bytes": V1_UNLIMITED,
            "user.slice/memory.max": "max",
        }
    )  # fmt: skip
    assert cgroups.memory_limit() is None and cgroups.cpu_quota() is None


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_a_job_without_slurm_variables_gets_its_cgroup_budget(tmp_path, layout):
    """What a task inside `apptainer run --cleanenv` sees: no SLURM_MEM_PER_NODE."""
    if layout == "v2":
        cgroups = tree(tmp_path, f"0::/{JOB}/step_0\n", {f"{JOB}/memory.max": str(GIB)})
    else:
        files = {f"memory/{V1_JOB}/memory.limit_in_bytes": str(GIB)}
        cgroups = tree(tmp_path, f"4:memory:/{V1_JOB}/step_0\n", files)
    total, source = memory_allocation(2, env={}, cgroups=cgroups)
    assert total == GIB and "cgroup memory limit" in source and "job_42" in source
    budget = plan_memory(None, 2, held_bytes=0, env={}, cgroups=cgroups)
    assert budget.total == GIB
    assert plan_memory(4096, 2, 0, env={}, cgroups=cgroups).source.startswith("--mem-mb capped")


def test_the_cpu_budget_follows_the_job_cgroup(tmp_path):
    files = {f"{JOB}/cpu.max": "100000 100000"}
    cgroups = tree(tmp_path, f"0::/{JOB}/step_0\n", files)
    assert cpu_allocation(env={}, cgroups=cgroups)[0] == 1
    assert plan_budget(("cpu",), None, None, env={}, cgroups=cgroups).cpus == 1
