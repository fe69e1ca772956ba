"""The event API under schemathesis: bounded and derandomized here; `make fuzz` explores freely."""

from fuzz_api import fuzz


def test_schemathesis_finds_nothing_in_the_event_api(capsys):
    result = fuzz(max_examples=20, deterministic=True)
    assert result.exit_code == 0, result.output[-6000:]
    assert result.tracebacks == [], result.tracebacks[:3]
    assert result.answers_after == 200
    assert result.cases > 300, result.output[-2000:]  # it really ran: the four operations, every phase
    with capsys.disabled():
        print(f"\nschemathesis: {result.cases} cases in {result.seconds:.0f} s, no issue, no traceback")
