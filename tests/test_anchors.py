"""Heads kept elsewhere, append-only proofs, inclusion proofs and signed heads, as a user
drives them from the command line (docs/ledger.md, "Heads, proofs and signatures")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_cli import market, verdict
from test_consistent_rewrite import EPISODES, KEPT, drop_last_episodes

from ledger.disk import DiskLedger
from ledger.merkle import TreeHead, check_consistency
from simulation.rundir import LEDGER, SUMMARY

DOCS = Path(__file__).parents[1] / "docs" / "ledger.md"
RUN = ("simulate", "--task", "chain", "--mechanism", "v", "--bidder", "random", "--seed", "0")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A signed run of 1,000 episodes, its key, and the head it printed."""
    base = tmp_path_factory.mktemp("signed")
    key = base / "keys" / "k"
    assert market("keygen", str(key)).exit_code == 0
    result = market(*RUN, "--episodes", "1000", "--out", str(base / "v"), "--sign-key", str(key))
    assert result.exit_code == 0, result.output
    printed = re.search(r"ledger head ([0-9a-f]{64})  \(1,000 episodes, ([0-9,]+) events; "
                        r"signature [0-9a-f]{128}\)", result.output)  # fmt: skip
    assert printed is not None, result.output
    return base / "v", key, printed[1]


def head_json(run: Path) -> dict[str, object]:
    result = market("head", str(run), "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.output)
    return data


def test_the_printed_head_is_the_one_market_head_and_summary_json_give(
    signed: tuple[Path, Path, str],
) -> None:
    """simulate prints the full head; `market head` and summary.json agree with it."""
    run, _, printed = signed
    head = head_json(run)
    assert head["root"] == printed == json.loads((run / SUMMARY).read_text())["head"]
    assert head["events"] == DiskLedger(run / LEDGER).next_seq
    assert head["size"] == len(DiskLedger(run / LEDGER).links) and head["signature"]


def test_a_kept_head_and_the_public_key_vouch_for_the_run(
    signed: tuple[Path, Path, str],
) -> None:
    """16 hex digits of the head and the public key: clean, every head signed."""
    run, key, printed = signed
    result = market("audit", str(run), "--head", printed[:16], "--verify-key", f"{key}.pub")
    size = head_json(run)["size"]
    assert result.exit_code == 0 and f"all {size:,} heads signed by the key" in verdict(result)


def test_a_continuation_is_proved_to_only_append(
    signed: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """--resume with the key, then `audit --since` the head kept before: clean, with the
    events appended; `prove --since` gives a proof that checks offline."""
    run, key, kept = signed
    copy = tmp_path / "v"
    _copy_run(run, copy)
    refused = market("simulate", "--resume", str(copy), "--episodes", "500")
    assert refused.exit_code == 2 and "give --sign-key KEY" in refused.output
    resumed = market("simulate", "--resume", str(copy), "--episodes", "500", "--sign-key", str(key))
    assert resumed.exit_code == 0, resumed.output
    before, after = DiskLedger(run / LEDGER).next_seq, DiskLedger(copy / LEDGER).next_seq
    result = market("audit", str(copy), "--since", kept, "--verify-key", f"{key}.pub")
    assert result.exit_code == 0, result.output
    assert f"extends head {kept[:16]} ({before:,} events) by appending {after - before:,}" in (
        verdict(result)
    )
    proved = market("prove", str(copy), "--since", kept[:20])
    proof = json.loads(proved.output)
    check_consistency(TreeHead(**proof["prior"]), TreeHead(**{
        k: proof["head"][k] for k in ("size", "events", "root")}), proof["proof"])  # fmt: skip
    assert proof["prior"]["root"] == kept and proof["head"]["root"] == head_json(copy)["root"]


def test_a_consistent_rewrite_fails_since_and_the_signatures(
    signed: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """The last episodes dropped, the run closed there, every digest and link recomputed and
    summary.json rewritten to match: the rules cannot tell, but the head kept earlier is no
    prefix of it, and the signatures no longer match its heads."""
    _, key, _ = signed
    run = tmp_path / "v"
    made = market(*RUN, "--episodes", str(EPISODES), "--out", str(run), "--sign-key", str(key))
    assert made.exit_code == 0, made.output
    kept = DiskLedger(run / LEDGER).head
    drop_last_episodes(run, KEPT)
    assert market("audit", str(run), "--unanchored").exit_code == 0  # the rules alone pass it
    since = market("audit", str(run), "--since", kept)
    assert since.exit_code == 1
    assert verdict(since).startswith("AUDIT FAILED seq 0: append-only: expected a ledger that "
                                     f"extends head {kept[:16]}")  # fmt: skip
    signatures = market("audit", str(run), "--unanchored", "--verify-key", f"{key}.pub")
    assert signatures.exit_code == 1
    assert verdict(signatures) == (
        "AUDIT FAILED seq 0: signature: expected the head after "
        f"{DiskLedger(run / LEDGER).next_seq:,} events signed by the key, found a signature "
        "the key rejects"
    )


def test_another_key_or_an_unsigned_run_fails_verify_key(
    signed: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """A head signed by another key, or not signed at all, is a `signature` violation; an
    unsigned run audited without a key says its heads are unsigned."""
    run, _, _ = signed
    other = tmp_path / "other"
    assert market("keygen", str(other)).exit_code == 0
    wrong = market("audit", str(run), "--verify-key", f"{other}.pub")
    assert wrong.exit_code == 1 and "signature: " in verdict(wrong)
    plain = tmp_path / "plain"
    assert market(*RUN, "--episodes", "30", "--out", str(plain)).exit_code == 0
    assert verdict(market("audit", str(plain))).endswith("; heads unsigned")
    unsigned = market("audit", str(plain), "--verify-key", f"{other}.pub")
    assert unsigned.exit_code == 1 and "found no signature" in verdict(unsigned)


def test_an_inclusion_proof_checks_offline_with_the_docs_few_lines(
    signed: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`market prove --seq N --out DIR` writes a proof the docs' verifier accepts, and it
    refuses a proof whose event was changed."""
    run, _, kept = signed
    assert (
        market("prove", str(run), "--seq", "4711", "--out", str(tmp_path / "proof")).exit_code == 0
    )
    snippet = re.search(r"```python\n(.*?)```", DOCS.read_text().split("## Proofs")[1], re.S)
    assert snippet is not None
    code = snippet[1].replace("HEAD-YOU-KEPT", kept)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOCS), "exec"), {})
    proof = tmp_path / "proof" / "proof.json"
    changed = json.loads(proof.read_text())
    changed["event"]["amount"] = (changed["event"]["amount"] or 0) + 1
    proof.write_text(json.dumps(changed))
    with pytest.raises(AssertionError):
        exec(compile(code, str(DOCS), "exec"), {})


def test_bad_proof_requests_and_keys_get_one_line(
    signed: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """An event past the end, no proof kind, a missing key: one line, exit 2."""
    run, key, _ = signed
    for args in (
        ("prove", str(run), "--seq", "99999999"),
        ("prove", str(run)),
        ("audit", str(run), "--verify-key", str(tmp_path / "missing.pub")),
        ("audit", str(run), "--verify-key", str(key)),  # the private key is not a public one
        ("keygen", str(key)),  # never overwrite a key
        ("audit", str(run), "--since", "xyz"),
    ):
        result = market(*args)
        assert result.exit_code == 2 and result.output.startswith("error: "), (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output


def _copy_run(run: Path, to: Path) -> None:
    import shutil

    shutil.copytree(run, to)
