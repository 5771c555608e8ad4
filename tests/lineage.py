"""Sample-lineage checks shared by the checkpoint/resume tests (mpiexec and Slurm)."""


def check_lineage(counts, steps, p, n):
    """Every trained sample once, whole groups, steps * p groups; a group of the schedule that was not trained
    on was discarded by the store as too stale (counted) and replaced by a new prompt id beyond the schedule."""
    groups = {}
    for pid, k in counts:
        groups.setdefault(pid, set()).add(k)
    assert all(ks == set(range(n)) for ks in groups.values()), "a prompt group was trained on in part"
    assert len(groups) == steps * p, (len(groups), steps * p)
    missing = set(range(steps * p)) - set(groups)
    extra = set(groups) - set(range(steps * p))
    assert len(missing) <= len(extra), f"groups lost: {sorted(missing)[:10]} (replacements: {sorted(extra)[:10]})"
