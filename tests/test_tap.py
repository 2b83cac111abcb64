"""Parsing kselftest TAP as hmm-tests prints it."""

from __future__ import annotations

from hmmgpu.host.tap import parse

SAMPLE = """\
TAP version 13
1..4
# Starting 4 tests from 2 test cases.
#  RUN           hmm.hmm_device_private.open_close ...
#            OK  hmm.hmm_device_private.open_close
ok 1 hmm.hmm_device_private.open_close
#  RUN           hmm.hmm_device_private.anon_read ...
# hmm-tests.c:123:anon_read:Expected 0 (0) == ret (-14)
#          FAIL  hmm.hmm_device_private.anon_read
not ok 2 hmm.hmm_device_private.anon_read
ok 3 hmm.hmm_device_coherent.open_close # SKIP DEVICE_COHERENT not available
ok 4 hmm.hmm_gup_test # XFAIL expected
# FAILED: 1 / 4 tests passed.
# Totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:0
"""


def test_parse_counts_each_status() -> None:
    r = parse(SAMPLE)
    assert r.planned == 4 and r.complete
    assert dict(r.count()) == {"pass": 1, "fail": 1, "skip": 1, "xfail": 1}
    assert [c.name for c in r.failed] == ["hmm.hmm_device_private.anon_read"]
    assert r.cases[2].reason == "DEVICE_COHERENT not available"


def test_truncated_output_is_incomplete() -> None:
    r = parse("\n".join(SAMPLE.splitlines()[:7]))
    assert r.planned == 4 and len(r.cases) == 1 and not r.complete
