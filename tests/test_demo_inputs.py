"""revvision.inputs: how the demo tools expand their inputs and choose their outputs."""

import pytest

from backbones.errors import UserError
from revvision.inputs import (IMAGE_EXTENSIONS, expand_inputs, output_file,
                              split_config_overrides)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/2.png", "a/1.JPG", "a/notes.txt", "b.png", "c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_files_folders_and_globs_in_order_without_repeats(tree):
    paths = expand_inputs([str(tree / "b.png"), str(tree / "a"), str(tree / "*.png"),
                           str(tree / "c.*")], IMAGE_EXTENSIONS, "image")
    assert paths == [str(tree / p) for p in ("b.png", "a/1.JPG", "a/2.png", "c.jpeg")]


def test_unmatched_inputs_are_named(tree):
    with pytest.raises(UserError, match=r"image input .*nothing\*\.png does not exist"):
        expand_inputs([str(tree / "nothing*.png")], IMAGE_EXTENSIONS, "image")
    (tree / "empty").mkdir()
    with pytest.raises(UserError, match=r"folder .*empty contains no image files"):
        expand_inputs([str(tree / "empty")], IMAGE_EXTENSIONS, "image")


def test_trailing_config_overrides_are_split_off(tree):
    assert split_config_overrides(["x.png", str(tree), "MODEL.WEIGHTS", "w.pth", "SEED", "1"]) \
        == (["x.png", str(tree)], ["MODEL.WEIGHTS", "w.pth", "SEED", "1"])
    assert split_config_overrides(["x.png"]) == (["x.png"], [])


def test_output_is_a_file_for_one_input_else_a_folder(tree):
    image = str(tree / "b.png")
    assert output_file(str(tree / "out.jpg"), image, True, IMAGE_EXTENSIONS) == str(tree / "out.jpg")
    assert output_file(str(tree / "out"), image, False, IMAGE_EXTENSIONS) == str(tree / "out" / "b.png")
    assert (tree / "out").is_dir()
    assert output_file(str(tree / "v"), image, True, (), suffix="_t.png") == str(tree / "v" / "b_t.png")
    with pytest.raises(UserError, match="refusing to write .*b.png: it is the input"):
        output_file(image, image, True, IMAGE_EXTENSIONS)
    with pytest.raises(UserError, match="refusing to write"):
        output_file(str(tree), image, False, IMAGE_EXTENSIONS)  # tree/b.png is the input
    with pytest.raises(UserError, match="c.jpeg is a file; give a folder"):
        output_file(str(tree / "c.jpeg"), image, False, IMAGE_EXTENSIONS)
