"""The one Markdown table writer."""
import pytest

from targetprop import markdown


def test_table_writes_header_rule_and_rows():
    assert markdown.table(["a", "b"], [[1, "x"], [2.5, ""]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 |  |"


def test_table_without_rows_is_header_and_rule():
    assert markdown.table(["only"], []) == "| only |\n|---|"


def test_a_bar_inside_a_cell_is_escaped():
    assert markdown.row(["a|b", 3]) == "| a\\|b | 3 |"


def test_a_row_of_the_wrong_width_is_a_one_line_error():
    with pytest.raises(ValueError, match="row 1 has 1 cells, the header 2"):
        markdown.table(["a", "b"], [[1, 2], [3]])
