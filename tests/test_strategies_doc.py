"""docs/strategies.md's example runs as written and does what the text says."""
import re
from pathlib import Path


def test_strategies_doc_example_runs(capsys):
    text = (Path(__file__).resolve().parent.parent / "docs" / "strategies.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "docs/strategies.md", "exec"), {"__name__": "strategies_doc"})
    epochs, threshold = capsys.readouterr().out.split()
    assert int(epochs) == 1 and float(threshold) == 10.0  # the text: it stops after the first epoch


def test_builtins_doc_example_runs(capsys):
    """The "Built-in strategies" example: the swapped-in display prints one line per epoch, the built-in's none."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "strategies.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[1]
    exec(compile(code, "docs/strategies.md", "exec"), {"__name__": "strategies_doc"})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["epoch 1", "epoch 2"]
    assert lines[2:] == ["progress run-folder"]
