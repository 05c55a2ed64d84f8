"""The loop's cadence (maepp/cadence.py), step by step, without training."""

from maepp.cadence import Cadence

STEPS = range(1, 11)
CADENCE = Cadence(first_step=1, total_steps=10, log_every=7, checkpoint_every=4, evals=(("held_out", 5),))


def _due(question, cadence=CADENCE, **kwargs):
    return [step for step in STEPS if step >= cadence.first_step and question(step, **kwargs)]


def test_each_action_has_its_own_steps_and_the_host_reads_the_devices_for_all_of_them():
    assert _due(CADENCE.save_due, stop_requested=False) == [4, 8, 10]  # interval, and the last step
    assert _due(CADENCE.evals_due, stop_requested=False) == [5, 10]
    assert _due(CADENCE.stopping, stop_requested=False) == [10]
    # First (compilation's end), saves, evaluation, log step, last.
    assert _due(CADENCE.log_due, stop_requested=False) == [1, 4, 5, 7, 8, 10]


def test_each_evaluator_keeps_its_own_steps():
    two = Cadence(first_step=1, total_steps=10, log_every=7, checkpoint_every=4, evals=(("held_out", 5), ("kw", 3)))
    assert {step: two.evals_due(step, False) for step in STEPS if two.evals_due(step, False)} == {
        3: ["kw"],
        5: ["held_out"],
        6: ["kw"],
        9: ["kw"],
        10: ["held_out", "kw"],
    }
    assert _due(two.log_due, two, stop_requested=False) == [1, 3, 4, 5, 6, 7, 8, 9, 10]


def test_a_resumed_run_logs_its_first_step():
    resumed = Cadence(first_step=6, total_steps=10, log_every=7, checkpoint_every=4, evals=(("held_out", 5),))
    assert _due(resumed.log_due, resumed, stop_requested=False) == [6, 7, 8, 10]


def test_a_requested_stop_saves_and_logs_at_once_but_does_not_evaluate():
    for step in (3, 5, 6):
        assert CADENCE.stopping(step, True) and CADENCE.save_due(step, True) and CADENCE.log_due(step, True)
        assert not CADENCE.evals_due(step, True)  # step 5 would evaluate: a preempted job has seconds left


def test_no_interval_save_during_a_non_finite_streak_but_the_last_and_a_stop_still_save():
    assert not CADENCE.save_due(8, False, nonfinite_in_a_row=2)
    assert CADENCE.save_due(8, False, nonfinite_in_a_row=0)
    assert CADENCE.save_due(10, False, nonfinite_in_a_row=2)
    assert CADENCE.save_due(6, True, nonfinite_in_a_row=3)


def test_a_run_without_evaluators_never_evaluates():
    no_eval = Cadence(first_step=1, total_steps=10, log_every=7, checkpoint_every=4)
    assert _due(no_eval.evals_due, no_eval, stop_requested=False) == []
    assert _due(no_eval.log_due, no_eval, stop_requested=False) == [1, 4, 7, 8, 10]


def test_from_config():
    from maepp.configs import audiomaepp

    config = audiomaepp.get_config("micro")
    config.update(total_steps=10, log_every=7, checkpoint_every=4)
    config.evals.held_out.every = 5
    assert Cadence.from_config(config, 1, ["held_out"]) == CADENCE
    assert Cadence.from_config(config, 1).evals == ()
