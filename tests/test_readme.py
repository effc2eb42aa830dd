"""The README stays true: its test command is the one CI runs, and its Python example runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Run the tests", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_readme_python_example_runs():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Use the mixture from Python", 1)[1]
    code = re.search(r"```python\n(.+?)\n```", block, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README example", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["model"].n_active_ == 5


def test_readme_first_command_runs_the_main_job_and_its_figure_exists():
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    assert first.endswith("-m experiments.analyze")
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        assert (ROOT / image).is_file(), image
