"""The README's Python example runs as written."""
import re
from pathlib import Path


def test_readme_python_example_runs(capsys):
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 2 and float(lines[-1].split()[-1]) >= 0.0
    assert Path("runs/my-run/summary.json").is_file()  # the conftest runs each test in a temp folder
