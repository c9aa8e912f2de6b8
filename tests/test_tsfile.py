"""The ``.ts`` reader (tasks/tsfile.py): values, labels and lengths of tiny generated files, and
a clear error naming the file and the line for each malformed one."""
import math
import re

import pytest
import torch

from datafiles import ts_text
from targetprop.tasks.datasets import DatasetError
from targetprop.tasks.tsfile import read_ts


def write(tmp_path, text: str, name="toy.ts"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_univariate_equal_length(tmp_path):
    path = write(tmp_path, ts_text([([[1, 2, 3]], "b"), ([[4.5, -5, 6e-1]], "a")]))
    f = read_ts(path)
    assert f.problem == "Toy" and f.classes == ("a", "b") and f.dimensions == 1 and f.lengths == [3, 3]
    assert f.labels.tolist() == [1, 0]
    assert f.series[0].dtype == torch.float64 and f.series[0].shape == (3, 1)
    assert f.series[1][:, 0].tolist() == [4.5, -5.0, 0.6]


def test_multivariate_variable_length_steps_by_channels(tmp_path):
    cases = [([[1, 2], [10, 20]], "x"), ([[3, 4, 5], [30, 40, 50]], "z")]
    f = read_ts(write(tmp_path, ts_text(cases, classes="x y z")))
    assert f.dimensions == 2 and f.lengths == [2, 3] and f.labels.tolist() == [0, 2]
    assert f.series[1].tolist() == [[3, 30], [4, 40], [5, 50]]  # (T, d): one row per step


def test_missing_values_read_as_nan(tmp_path):
    f = read_ts(write(tmp_path, ts_text([([[1, None, 3]], "a")], extra_header="@missing true")))
    values = f.series[0][:, 0].tolist()
    assert values[0] == 1 and math.isnan(values[1]) and values[2] == 3


def test_bom_comments_blank_lines_and_key_case(tmp_path):
    text = "\ufeff#c\n\n@PROBLEMNAME P\n@univariate TRUE\n@classlabel true 0 1\n#x\n@DATA\n\n1,2:1\n# mid\n3,4:0\n"
    f = read_ts(write(tmp_path, text))
    assert f.problem == "P" and f.labels.tolist() == [1, 0] and f.series[1][:, 0].tolist() == [3, 4]


GOOD_HEADER = "@problemName P\n@univariate true\n@classLabel true a b\n"
MALFORMED = [
    ("@problemName P\n@univariate true\n@classLabel true a b\n1,2:a\n", 4, "expected a header line"),
    (GOOD_HEADER + "@data\n1,x:a\n", 5, "dimension 1: 'x' is not a number"),
    (GOOD_HEADER + "@data\n1,2:c\n", 5, "class label 'c' is not one of @classLabel's (a b)"),
    (GOOD_HEADER + "@data\n1,2:3,4:a\n", 5, "2 dimension(s), expected 1"),
    (GOOD_HEADER + "@data\n1,,2:a\n", 5, "an empty value"),
    (GOOD_HEADER + "@data\n:a\n", 5, "dimension 1 has no values"),
    (GOOD_HEADER + "@data\n1,inf:a\n", 5, "is not finite"),
    (GOOD_HEADER + "@missing false\n@data\n1,?:a\n", 6, "declares @missing false"),
    (GOOD_HEADER + "@equalLength true\n@seriesLength 2\n@data\n1,2:a\n1,2,3:b\n", 8, "length 3"),
    (GOOD_HEADER + "@equalLength true\n@data\n1,2:a\n1,2,3:b\n", 7, "equal lengths of 2"),
    ("@problemName P\n@univariate false\n@classLabel true a\n@data\n1,2:3,4:a\n1,2:3:a\n", 6,
     "dimension 2 has 1 values, dimension 1 has 2"),
    ("@problemName P\n@univariate false\n@classLabel true a\n@data\n1:2:a\n1:a\n", 6, "1 dimension(s), expected 2"),
    ("@problemName P\n@univariate false\n@dimensions 3\n@classLabel true a\n@data\n1:2:a\n", 6, "expected 3"),
    (GOOD_HEADER + "@data\n", 4, "no case after @data"),
    (GOOD_HEADER + "@data\n1:a\n@missing true\n", 6, "header line '@missing' after @data"),
    (GOOD_HEADER + "@colour red\n@data\n", 4, "unknown header key @colour"),
    (GOOD_HEADER + "@univariate true\n@data\n", 4, "@univariate given twice"),
    ("@problemName P\n@classLabel true a\n@data\n1:a\n", 3, "required header key(s) @univariate"),
    ("@problemName P\n@univariate true\n@classLabel false\n", 3, "only classification files"),
    ("@problemName P\n@univariate true\n@targetLabel true\n", 3, "@targetLabel"),
    ("@problemName P\n@univariate true\n@timeStamps true\n", 3, "@timeStamps true"),
    ("@problemName P\n@univariate maybe\n", 2, "@univariate must be true or false"),
    ("@problemName P\n@univariate true\n@seriesLength -3\n", 3, "positive integer"),
    ("@problemName P\n@univariate true\n@dimensions 2\n@classLabel true a\n@data\n", 5, "@univariate true with"),
    ("@problemName P\n@univariate true\n@classLabel true a a\n", 3, "names a label twice"),
]


@pytest.mark.parametrize("text, line, message", MALFORMED, ids=[m[2][:30] for m in MALFORMED])
def test_malformed_file_names_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(DatasetError) as err:
        read_ts(path)
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(f"{path}, line {line}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_no_data_line_and_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'toy.ts'}: no @data line")):
        read_ts(write(tmp_path, GOOD_HEADER))
    with pytest.raises(DatasetError, match="missing data file: expected .*absent.ts"):
        read_ts(tmp_path / "absent.ts")
