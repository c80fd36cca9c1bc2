"""Every combination of the dataset options either works or is refused with one clear line.

The space is small (3 x 2 x 3 combinations of --coco-root, --annotations and
--images), so it is walked exhaustively, through the library call and through
the command line; neither may raise anything but the project's own errors.
"""

import itertools

import pytest

from m2det_impl.cli import main
from m2det_impl.errors import M2DetError
from m2det_impl.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from m2det_impl.pipeline.dataset import resolve_dataset
from m2det_impl.resources import MINI_COCO

pytestmark = pytest.mark.cpu

ANN = MINI_COCO / "annotations" / "instances_minival2014.json"
ROOTS = {"none": None, "root": MINI_COCO, "missing": "/data/nope"}
ANNOTATIONS = {"none": None, "file": ANN}
IMAGES = {"none": None, "folder": MINI_COCO / "val2014", "missing": "/data/nope/val2014"}
COMBINATIONS = list(itertools.product(ROOTS, ANNOTATIONS, IMAGES))


def _expected_ok(root, ann, img) -> bool:
    if root == "missing" or img == "missing":
        return False
    return not (ann == "file" and img == "none" and root == "none")  # annotations need their images


@pytest.mark.parametrize("root, ann, img", COMBINATIONS)
def test_library_resolves_or_refuses(root, ann, img):
    args = (ROOTS[root], ANNOTATIONS[ann], IMAGES[img], 2)
    if _expected_ok(root, ann, img):
        data = resolve_dataset(*args)
        assert len(data.records) == 2
        assert (data.annotations is None) == (ann == "none" and root == "none" and img == "folder")
    else:
        with pytest.raises(M2DetError):
            resolve_dataset(*args)


@pytest.mark.parametrize("root, ann, img", COMBINATIONS)
def test_preprocess_command_works_or_says_one_line(tmp_path, capsys, root, ann, img):
    argv = ["preprocess", "--output", str(tmp_path / "out"), "--limit", "1", "--quiet"]
    for flag, value in (("--coco-root", ROOTS[root]), ("--annotations", ANNOTATIONS[ann]), ("--images", IMAGES[img])):
        if value is not None:
            argv += [flag, str(value)]
    code = main(argv)
    err = capsys.readouterr().err
    if _expected_ok(root, ann, img):
        assert code == EXIT_OK, err
        assert len(list((tmp_path / "out").glob("*.bin"))) == 1
    else:
        assert code == EXIT_BAD_INPUT
        assert err.count("\n") == 1 and "m2det preprocess: error:" in err and "internal error" not in err
        if root == "missing":
            assert "/data/nope: COCO root folder not found" in err
        elif img == "missing":
            assert "/data/nope/val2014: image folder not found" in err
        else:
            assert "--annotations needs the images it annotates" in err
