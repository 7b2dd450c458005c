"""Plausible bugs, each put into a copy of the code, and whether the tests meant to catch it do.

    python benchmarks/mutations.py [--only NAME ...] [--keep]

The working tree (tracked and untracked files, not ignored ones) is copied to a temporary
folder; the tests named for each mutation run there first on the unchanged code (they must
pass, or the row says so), then once per mutation with that bug applied, with
`PYTHONPATH` pointing at the copy's `src/`. A mutation whose text is no longer in the code
is reported as stale: update it here when the code it breaks moves. Prints a table; exits
non-zero when a mutation survives or is stale. Takes a few minutes on 2 cores.

Each mutation is one of the bugs a reviewer applied by hand (issue 13) or one this
project has met, written as exact text replacements so that it cannot drift silently.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str
    path: str  # relative to the repository root
    edits: Tuple[Tuple[str, str], ...]  # (exact text, its replacement), each text found exactly once
    tests: Tuple[str, ...]  # pytest arguments: files or node ids


MUTATIONS: Tuple[Mutation, ...] = (
    Mutation(
        "signflip-per-item", "SignFlip (and ChannelSwap) draw one coin per item instead of one per source",
        "src/danna_sep/data/augment.py",
        (("chosen = _chance(x.shape[:2], self.p", "chosen = _chance(x.shape[:1], self.p"),
         ("torch.where(chosen[:, :, None, None], self.changed(x), x)",
          "torch.where(chosen[:, None, None, None], self.changed(x), x)")),
        ("tests/test_data.py::test_sign_flip_draws_a_sign_per_item_and_source",),
    ),
    Mutation(
        "spool-whole-file", "load_spooled decodes the whole file into memory before spooling it",
        "src/danna_sep/audio/load.py",
        (("            for block in reader:\n",
          "            for block in [torch.cat([torch.from_numpy(b) for b in reader], dim=1).numpy()]:\n"),),
        ("tests/test_audio.py::test_load_spooled_memory_does_not_grow_with_the_track",),
    ),
    Mutation(
        "no-x-sums-everything", "no_X is the sum of all sources, X included",
        "src/danna_sep/separator.py",
        (('kept = [i for i, s in enumerate(sources) if f"no_{s}" != name]',
          "kept = list(range(len(sources)))"),),
        ("tests/test_cli_separate.py::test_two_stems_selection_and_no_overwrite",),
    ),
    Mutation(
        "bundle-in-place", "save_bundle writes into the target folder, with no staging folder",
        "src/danna_sep/bundle.py",
        (("    with atomic.writing(target, directory=True) as staging:\n",
          "    target.mkdir(parents=True, exist_ok=True)\n    for staging in [target]:\n"),),
        ("tests/test_bundle.py::test_a_failed_save_leaves_no_bundle_and_no_staging_folder",
         "tests/test_bundle.py::test_a_failed_forced_save_keeps_the_old_bundle"),
    ),
    Mutation(
        "scheduler-not-resumed", "resume restores the model and optimiser but not the learning-rate schedule",
        "src/danna_sep/train/trainer.py",
        (('            if self.scheduler is not None and state.get("scheduler"):\n'
          '                self.scheduler.load_state_dict(state["scheduler"])\n', ""),),
        ("tests/test_train.py::test_resume_at_epoch_boundaries_across_a_milestone_equals_the_uninterrupted_run",),
    ),
    Mutation(
        "bfloat16-mixture-stft", "under bfloat16 the mixture STFT itself is rounded to bfloat16, not only the networks",
        "src/danna_sep/runner.py",
        (("        return self._filter(self._estimates(mix_stft), mix_stft, max_bin=max_bin)\n",
          '        if self.options.precision == "bfloat16":\n'
          "            mix_stft = torch.view_as_complex(torch.view_as_real(mix_stft).to(torch.bfloat16).float())\n"
          "        return self._filter(self._estimates(mix_stft), mix_stft, max_bin=max_bin)\n"),),
        ("tests/test_precision.py::test_only_the_network_runs_in_bfloat16",
         "tests/test_precision.py::test_bfloat16_masks_cannot_move_the_sum_of_the_stems"),
    ),
    Mutation(
        "interrupt-misses-encoding", "Ctrl-C with -j 2 during encoding still commits the track (cancel checked in pass 1 only)",
        "src/danna_sep/separator.py",
        (("                    if report is not None:  # lets a callback that raises (Ctrl-C) stop the encoding too\n"
          "                        report(\"encoding\", seconds * (index + writer.frames_written / out_length) / len(files), "
          "seconds)\n", ""),),
        ("tests/test_cli_bad_input.py::test_sigint_while_encoding_leaves_nothing_and_a_rerun_completes",),
    ),
    Mutation(
        "killed-temporaries-stay", "temporaries of a run killed while encoding are never removed, not even by a rerun",
        "src/danna_sep/atomic.py",
        (("        if found[\"host\"] == host_tag() and pid != os.getpid() and _process_is_gone(pid):\n",
          "        if False:\n"),),
        ("tests/test_cli_bad_input.py::test_sigkill_then_a_rerun_writes_the_track_whole",),
    ),
    Mutation(
        "batched-segments-out-of-order", "segments separated in one batch come back in the wrong order",
        "src/danna_sep/engine.py",
        (("        for i, out in zip(group, outs):\n", "        for i, out in zip(group, reversed(outs)):\n"),),
        ("tests/test_engine.py::test_segments_in_batches_give_what_one_at_a_time_gives",),
    ),
    Mutation(
        "joint-wiener-not-rescaled", "the joint Wiener filter's result is not scaled back by the members' weights",
        "src/danna_sep/engine.py",
        (("            spectrum = filtered * share.to(filtered.device)[None, :, None, None, None]\n",
          "            spectrum = filtered\n"),),
        ("tests/test_engine.py::test_joint_wiener_filters_the_blended_magnitudes_once",),
    ),
    Mutation(
        "single-target-no-residual", "a single-target model is Wiener-filtered alone (mask 1: the mixture back)",
        "src/danna_sep/runner.py",
        (("            residual=single,\n", "            residual=False,\n"),),
        ("tests/test_engine.py::test_a_single_target_model_is_filtered_against_the_residual",),
    ),
    Mutation(
        "weighted-bins-off-by-one", "a member's Wiener filter stops one bin short of its last weighted bin",
        "src/danna_sep/engine.py",
        (("    return int(weighted[-1]) + 1\n", "    return int(weighted[-1])\n"),),
        ("tests/test_engine.py::test_blend_weighs_a_member_only_on_the_bins_it_models",),
    ),
    Mutation(
        "bfloat16-conv-unchecked", "a bfloat16 convolution that disagrees with float32 is used as it is",
        "src/danna_sep/models/layout.py",
        (("                return self._in_float32(planes).squeeze(2)\n", "                pass\n"),),
        ("tests/test_layout.py::test_a_bfloat16_convolution_that_disagrees_with_float32_computes_in_float32",),
    ),
    Mutation(
        "fused-wiener-unconjugated", "the compiled Wiener filter uses R_01 where R_10 belongs",
        "src/danna_sep/wiener_fused.py",
        (("(r01r * w0r[t] + r01i * w0i[t] + r11 * w1r[t])", "(r01r * w0r[t] - r01i * w0i[t] + r11 * w1r[t])"),),
        ("tests/test_wiener_fused.py::test_matches_norbert",),
    ),
    Mutation(
        "fused-wiener-openmp", "the compiled Wiener filter runs on numba's OpenMP beside torch's",
        "src/danna_sep/wiener_fused.py",
        (("                numba.config.THREADING_LAYER = THREADING_LAYER\n", "                pass\n"),),
        ("tests/test_wiener_fused.py::test_runs_on_numbas_own_thread_pool_not_a_second_openmp",),
    ),
)


def copy_tree(destination: Path) -> None:
    """The working tree's tracked and untracked (not ignored) files, as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        relative = Path(os.fsdecode(raw))
        source = REPO / relative
        if not source.is_file():  # deleted in the working tree but still in the index
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def apply(mutation: Mutation, root: Path) -> Optional[str]:
    """Apply `mutation` under `root`; the reason it cannot be applied, or None."""
    path = root / mutation.path
    text = path.read_text()
    for old, new in mutation.edits:
        count = text.count(old)
        if count != 1:
            return f"stale: {old.strip()[:60]!r} found {count} times in {mutation.path}"
        text = text.replace(old, new)
    path.write_text(text)
    return None


def run_tests(root: Path, tests: Sequence[str], timeout: float) -> Tuple[bool, str, float]:
    """Run `tests` in the copy; (passed, the last summary line, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(root / "src"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s", time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else done.stderr.strip().splitlines()[-1:]
    return done.returncode == 0, str(summary), time.monotonic() - started


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[m.name for m in MUTATIONS],
                        help="run these mutations only")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run (default: 900)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy and print where it is")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]

    workdir = Path(tempfile.mkdtemp(prefix="danna-sep-mutations-"))
    rows: List[Tuple[str, str, str, str]] = []
    failed = False
    try:
        clean = workdir / "clean"
        copy_tree(clean)
        baseline = {}
        for tests in sorted({m.tests for m in chosen}):
            baseline[tests] = run_tests(clean, tests, args.timeout)
            print(f"baseline {' '.join(tests)}: {baseline[tests][1]}", file=sys.stderr)
        for mutation in chosen:
            passed, summary, seconds = baseline[mutation.tests]
            if not passed:
                rows.append((mutation.name, " ".join(mutation.tests), "not run: fails unchanged", summary))
                failed = True
                continue
            copy = workdir / mutation.name
            shutil.copytree(clean, copy)
            problem = apply(mutation, copy)
            if problem is not None:
                rows.append((mutation.name, " ".join(mutation.tests), "STALE", problem))
                failed = True
                continue
            passed, summary, seconds = run_tests(copy, mutation.tests, args.timeout)
            verdict = "SURVIVED" if passed else "caught"
            failed |= passed
            rows.append((mutation.name, " ".join(mutation.tests), verdict, f"{summary} ({seconds:.0f} s)"))
            print(f"{mutation.name}: {verdict}", file=sys.stderr)
            shutil.rmtree(copy, ignore_errors=True)
    finally:
        if args.keep:
            print(f"copies kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print("| mutation | bug | tests | result | pytest |")
    print("|---|---|---|---|---|")
    bugs = {m.name: m.bug for m in MUTATIONS}
    for name, tests, verdict, summary in rows:
        print(f"| {name} | {bugs[name]} | {tests} | {verdict} | {summary} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
