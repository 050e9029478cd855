"""The export formats table: import-light, in step with the modules it names, and the checks
``export`` makes from it before any model is loaded (fast: no training)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tfguess.core.config import QUANTIZE_CHOICES, ExportConfig
from tfguess.core.errors import ConfigError, ExportError
from tfguess.export import FORMATS, QUANTIZATIONS, ExportConfigError, export
from tfguess.export.formats import EXPORT_FORMATS, FORMAT_NAMES, lookup, taking

# The output names each format's module writes, as the table's "writes" column must list them.
OUTPUT_CONSTANTS = {"tflite": ["TFLITE_FILENAMES"], "coreml": ["COREML_DIRNAME"],
                    "savedmodel": ["SAVEDMODEL_DIRNAME"], "frozen-graph": ["FROZEN_GRAPH_FILENAME"],
                    "onnx": ["ONNX_FILENAME"]}


def test_the_table_names_the_formats_in_order():
    assert FORMAT_NAMES == ("tflite", "coreml", "savedmodel", "frozen-graph", "onnx")
    assert FORMATS == FORMAT_NAMES
    assert QUANTIZATIONS == QUANTIZE_CHOICES   # the config's --quantize choices


def test_the_table_imports_nothing_heavy():
    code = ("import sys; import tfguess.export.formats; "
            "print(sorted(m for m in ('numpy', 'tensorflow', 'keras', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("row", EXPORT_FORMATS, ids=lambda r: r.name)
def test_each_row_names_its_writer_and_outputs(row):
    module = importlib.import_module(row.module)
    assert callable(getattr(module, row.function))
    names = []
    for constant in OUTPUT_CONSTANTS[row.name]:
        value = getattr(module, constant)
        names += list(value.values()) if isinstance(value, dict) else [value]
    assert all(name in row.writes for name in names), (row.writes, names)
    assert all(name.endswith(row.suffix) for name in names)
    assert "none" in row.quantizations and set(row.quantizations) <= set(QUANTIZE_CHOICES)


def test_aliases_and_case():
    assert lookup("PB").name == lookup("frozen_graph").name == "frozen-graph"
    assert lookup("Saved_Model").name == "savedmodel" and lookup("mlpackage").name == "coreml"
    assert lookup("pdf") is None
    assert taking("int8") == ("tflite",) and taking("none") == FORMAT_NAMES


def test_bad_settings_are_refused_before_the_model_is_read(tmp_path):
    missing = tmp_path / "no model here"
    with pytest.raises(ExportError, match="unknown export format pdf: choose from tflite, coreml"):
        export(missing, formats=["PDF", "tflite"])
    with pytest.raises(ExportError, match="quantize=float16 applies to the tflite format only"):
        export(missing, ExportConfig(formats=("coreml",), quantize="float16"))
    with pytest.raises(ExportConfigError, match="unknown quantization 'int4'") as bad:
        export(missing, formats=["tflite"], quantize="int4")
    assert isinstance(bad.value, ConfigError)
    with pytest.raises(ExportConfigError, match="unknown setting fromats"):
        export(missing, fromats=["onnx"])
    with pytest.raises(TypeError, match="ExportConfig"):
        export(missing, ["tflite"])   # the formats are a keyword now
