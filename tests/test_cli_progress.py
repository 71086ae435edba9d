"""The CLI's progress on stderr: a self-updating bar on a terminal, readable lines in a pipe or a log file."""

from __future__ import annotations

import io

from iscene_server.cli import ProgressBar
from iscene_server.engine.progress import ProgressUpdate


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def job_updates() -> list[ProgressUpdate]:
    """A job's updates: stage 1 in 25 steps over 0–40 %, the meshes of 4 objects over 40–100 %, then done."""
    updates = [ProgressUpdate("stage1", step, 25, 0.4 * step / 25, 10.0, 0.0) for step in range(26)]
    updates += [ProgressUpdate("meshes", step, 4, 0.4 + 0.15 * step, 5.0, 0.0) for step in range(5)]
    return updates + [ProgressUpdate("done", 1, 1, 1.0, 0.0, 0.0)]


def test_into_a_log_file_progress_is_a_few_plain_lines():
    log = io.StringIO()
    bar = ProgressBar(log)
    for update in job_updates():
        bar(update)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0] == "  0% stage1 0/25 ETA 0:10" and lines[-1] == "100% done ETA 0:00"
    stages = [line.split()[1] for line in lines]
    assert stages.count("done") == 1 and {"stage1", "meshes"} <= set(stages)
    assert 6 <= len(lines) <= 12  # a new stage or another tenth of the job, not one line per step (31 updates)


def test_on_a_terminal_the_bar_redraws_one_line():
    terminal = Terminal()
    bar = ProgressBar(terminal)
    for update in job_updates():
        bar(update)
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, ended when the job is done
    assert text.count("\r") >= 3 and "[" + "#" * 24 + "] 100% done" in text
