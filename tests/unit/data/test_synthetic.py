"""The synthetic task: correct answers, disjoint splits, determinism."""

from asyncflow_hpc.data.synthetic import exact_reward, make_task


def test_answers_and_disjoint_split():
    train, test = make_task("max", 3, 500, 100, seed=0)
    assert len(train) == 500 and len(test) == 100
    for ex in train[:50] + test[:50]:
        digits = [int(c) for c in ex.question.rstrip("=").split(",")]
        assert ex.reference == str(max(digits))
    assert not {e.question for e in train} & {e.question for e in test}


def test_add_mod_and_copy_first():
    train, _ = make_task("add_mod", 2, 50, 10, seed=1)
    for ex in train:
        a, b = ex.question.rstrip("=").split("+")
        assert ex.reference == str((int(a) + int(b)) % 10)
    train, _ = make_task("copy_first", 3, 20, 5, seed=1)
    assert all(ex.reference == ex.question[0] for ex in train)


def test_deterministic_and_seeded():
    assert make_task("max", 3, 30, 10, seed=3) == make_task("max", 3, 30, 10, seed=3)
    assert make_task("max", 3, 30, 10, seed=3)[0] != make_task("max", 3, 30, 10, seed=4)[0]


def test_exact_reward():
    assert exact_reward("1,2=", "2", "2") == 1.0
    assert exact_reward("1,2=", "22", "2") == 0.0
    assert exact_reward("1,2=", "", "2") == 0.0
