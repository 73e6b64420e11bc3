"""The README's "From your photos to a model you use" walkthrough runs as written: train, eval, predict, export,
then the Python snippet; predict's accuracy on the labelled folder is eval's."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

from fastretrain.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## From your photos to a model you use")
    return text[start : text.index("\n## ", start + 3)]


def test_walkthrough_runs_as_written(capsys):
    section = _section()
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    outputs = []
    for line in commands.strip().splitlines():
        argv = shlex.split(line, comments=True)
        if argv[0] == "python":
            subprocess.run([sys.executable, *argv[1:]], check=True)
            continue
        assert argv[0] == "fastretrain", line
        assert main(argv[1:]) == 0, line
        outputs.append(capsys.readouterr())
    train, _, eval_new, predict, export = outputs
    assert train.out.startswith("starting from: the ImageNet weights shipped for tf_efficientnet_lite0")
    assert Path("runs/photos/test_report/confusion_matrix.png").is_file()
    rows = Path("predictions.csv").read_text().splitlines()
    assert rows[0] == "path,true_class,class_1,prob_1,class_2,prob_2" and len(rows) == 1 + 30
    acc_eval = re.search(r"accuracy (\d\.\d{4}) on 30 images", eval_new.out).group(1)
    assert f"accuracy {acc_eval} (" in predict.err
    assert ": ok" in export.out and Path("runs/photos/model_best.onnx").is_file()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(" -> " in line for line in printed)
