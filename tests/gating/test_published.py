"""The published figures as the gates read them (m2det_impl.published, data/published.json):
the default table is the guide's, batches are integers, the platform is the 310P3."""

import json

import pytest

from m2det_impl import published
from m2det_impl.errors import M2DetError
from m2det_impl.resources import read_data_json

pytestmark = pytest.mark.cpu

# docs/reference.md section 10, typed in from the guide (not read from the data file).
GUIDE_310P3 = {1: 37.817, 4: 54.707, 8: 46.461, 16: 47.113, 32: 46.840}
GUIDE_T4 = {1: 50.658, 4: 60.997, 8: 52.890, 16: 62.186, 32: 64.602}
MODELZOO_310P3 = {1: 45.349, 4: 65.976, 8: 62.795, 16: 62.974, 32: 60.897, 64: 56.011}


def test_the_default_table_is_the_guides_and_is_keyed_by_int_batch():
    assert published.DEFAULT_PUBLISHED == "guide"
    assert published.PUBLISHED_THROUGHPUT["310P3"] == GUIDE_310P3
    assert published.PUBLISHED_THROUGHPUT["T4"] == GUIDE_T4
    assert published.GUIDE_BATCH_SIZES == (1, 4, 8, 16, 32)
    assert all(isinstance(b, int) for table in published.PUBLISHED_THROUGHPUT.values() for b in table)
    assert published.PUBLISHED_THROUGHPUT["310P3"][4] == 54.707  # a lookup by the batch a .om was built for


def test_throughput_table_defaults_to_the_310p3_column_of_the_guide():
    assert published.throughput_table() == GUIDE_310P3
    assert published.throughput_table("guide", "310P3") == GUIDE_310P3
    assert published.throughput_table("modelzoo-current") == MODELZOO_310P3
    assert published.throughput_table("guide", "T4")[32] == 64.602
    table = published.throughput_table()
    table[1] = 0.0  # a copy: the caller cannot change the published figures
    assert published.throughput_table()[1] == 37.817


def test_unknown_tables_and_platforms_name_the_choices():
    with pytest.raises(M2DetError, match="guide.*modelzoo-current"):
        published.throughput_table("nope")
    with pytest.raises(M2DetError, match="no T4 figures"):
        published.throughput_table("modelzoo-current", "T4")


def test_published_ap_and_names_match_the_data_file():
    data = read_data_json("published.json")
    assert published.PUBLISHED_AP == 0.378
    assert published.published_names() == tuple(data["throughput"])
    assert set(published.PUBLISHED_SOURCES) == set(data["throughput"])
    assert published.HOST_SCRIPTS_IMAGES_PER_SECOND == 25.0
    assert json.dumps(published.PUBLISHED_SOURCES)  # plain strings, ready for reports


def test_tables_key_batches_by_int_and_figures_by_float():
    tables = published._tables({"tables": {"310P3": {"1": "2.5", "4": 3}, "T4": {"8": 1.25}}, "source": "s"})
    assert tables == {"310P3": {1: 2.5, 4: 3.0}, "T4": {8: 1.25}}
    assert [type(b) for b in tables["310P3"]] == [int, int]
    assert [type(v) for v in tables["310P3"].values()] == [float, float]


def test_unknown_table_and_platform_errors_read_exactly():
    with pytest.raises(M2DetError) as err:
        published.throughput_table("nope")
    assert str(err.value) == "unknown published table 'nope'; choose one of " + ", ".join(published.published_names())
    with pytest.raises(M2DetError) as err:
        published.throughput_table("modelzoo-current", "T4")
    platforms = ", ".join(read_data_json("published.json")["throughput"]["modelzoo-current"]["tables"])
    assert str(err.value) == f"published table 'modelzoo-current' has no T4 figures (it has {platforms})"


def test_a_missing_platform_lists_every_platform_the_table_has(monkeypatch):
    monkeypatch.setattr(published, "_ALL", {"t": {"310P3": {1: 1.0}, "T4": {1: 2.0}}})
    with pytest.raises(M2DetError) as err:
        published.throughput_table("t", "A100")
    assert str(err.value) == "published table 't' has no A100 figures (it has 310P3, T4)"
