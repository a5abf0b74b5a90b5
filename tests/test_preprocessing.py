"""The one preprocessing definition (``sepconv.export.preprocessing``) against its references: the arithmetic written
out here in float64 (always runs), Keras' ``load_img`` + ``mobilenet_v2.preprocess_input`` and torchvision's
``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` (each skipped when the framework is absent), to 1e-6."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sepconv.export.networks import build_network
from sepconv.export.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KERAS,
    TORCHVISION,
    PreprocessError,
    centre_crop_box,
    describe,
    preprocess,
    style_for,
    to_rgb,
    torchvision_resize_size,
    torchvision_resized_shape,
)
from tests.images import picture

TOL = 1e-6
SIZES = [(123, 77), (77, 123), (96, 96), (500, 331), (31, 40)]


def keras_reference(image: Image.Image, r: int) -> np.ndarray:
    """Keras' recipe written out: PIL bilinear to r x r, then x / 127.5 - 1 (in float64)."""
    resized = image.resize((r, r), Image.Resampling.BILINEAR)
    return np.asarray(resized, np.float64) / 127.5 - 1.0


def torchvision_reference(image: Image.Image, r: int) -> np.ndarray:
    """torchvision's recipe written out: short side to int(r*256/224) (long side int(s*long/short)), centre crop
    at int(round((size - r) / 2)), /255, (x - mean) / std (in float64)."""
    s = int(r * 256 / 224)
    w, h = image.size
    new = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    resized = image.resize(new, Image.Resampling.BILINEAR)
    top, left = int(round((new[1] - r) / 2.0)), int(round((new[0] - r) / 2.0))
    x = np.asarray(resized.crop((left, top, left + r, top + r)), np.float64) / 255.0
    return (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("r", [32, 96, 224])
def test_keras_style_is_the_written_out_arithmetic(size: tuple[int, int], r: int) -> None:
    image = picture(*size, seed=size[0])
    x = preprocess(image, r, KERAS, "NHWC")
    assert x.dtype == np.float32 and x.shape == (r, r, 3)
    assert float(np.abs(x - keras_reference(image, r)).max()) <= TOL
    assert -1.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("r", [32, 96, 224])
def test_torchvision_style_is_the_written_out_arithmetic(size: tuple[int, int], r: int) -> None:
    image = picture(*size, seed=size[1])
    x = preprocess(image, r, TORCHVISION, "NHWC")
    assert x.dtype == np.float32 and x.shape == (r, r, 3)
    assert float(np.abs(x - torchvision_reference(image, r)).max()) <= TOL


def test_torchvision_geometry_by_hand() -> None:
    # R=96 -> resize the short side to int(96*256/224) = 109; a 300x200 image becomes int(109*300/200) = 163 x 109
    assert torchvision_resize_size(96) == 109 and torchvision_resize_size(224) == 256
    assert torchvision_resized_shape(300, 200, 109) == (163, 109)
    assert torchvision_resized_shape(200, 300, 109) == (109, 163)
    # offsets int(round(67 / 2)) = 34 (round half to even) and int(round(13 / 2)) = 6
    assert centre_crop_box(163, 109, 96) == (34, 6, 130, 102)


def test_known_pixel_values() -> None:
    # no resize at R = the image size: the arithmetic alone, on values whose results are known exactly
    arr = np.array([[[0, 255, 51]] * 4] * 4, np.uint8)
    image = Image.fromarray(arr, "RGB")
    k = preprocess(image, 4, KERAS, "NHWC")
    np.testing.assert_allclose(k[0, 0], [-1.0, 1.0, -0.6], atol=TOL)
    t = preprocess(image, 4, TORCHVISION, "NHWC")  # int(4*256/224) = 4: no resize, no crop offset
    expected = (np.array([0, 255, 51]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(t[2, 3], expected, atol=TOL)


@pytest.mark.parametrize("style", [KERAS, TORCHVISION])
def test_layouts_are_transposes(style: str) -> None:
    image = picture(70, 50, seed=3)
    nhwc, nchw = preprocess(image, 32, style, "NHWC"), preprocess(image, 32, style, "NCHW")
    assert nchw.shape == (3, 32, 32) and nchw.flags.c_contiguous
    np.testing.assert_array_equal(nchw, nhwc.transpose(2, 0, 1))


def test_bad_arguments_are_refused() -> None:
    image = picture(8, 8)
    with pytest.raises(PreprocessError, match="style"):
        preprocess(image, 8, "caffe", "NCHW")
    with pytest.raises(PreprocessError, match="layout"):
        preprocess(image, 8, KERAS, "CHW")
    with pytest.raises(PreprocessError, match="RGB"):
        preprocess(image.convert("L"), 8, KERAS, "NCHW")
    with pytest.raises(PreprocessError, match="resolution"):
        preprocess(image, 0, KERAS, "NCHW")


def test_style_follows_the_weights_origin(tmp_path: Path) -> None:
    seeded = build_network("mobilenet_v1", alpha=0.25, resolution=32, classes=4).metadata
    assert style_for(seeded) == KERAS
    assert style_for({}) == KERAS
    from sepconv.export.importers import build_imported
    from tests.fixtures.weights import decompress_all

    pytest.importorskip("safetensors")
    pytest.importorskip("h5py")
    files = decompress_all(tmp_path)
    keras_net, _ = build_imported(files / "mobilenet_v2_0.35_96.weights.h5", "mobilenet_v2", resolution=96)
    torch_net, _ = build_imported(files / "mobilenet_v2_0.35_96_torchvision.safetensors", "mobilenet_v2",
                                  resolution=96)
    assert style_for(keras_net.metadata) == KERAS
    assert style_for(torch_net.metadata) == TORCHVISION
    with pytest.raises(PreprocessError, match="caffe"):
        style_for({"weights_origin": "caffe"})


def test_describe() -> None:
    assert describe(224, TORCHVISION, "NCHW")["resize"] == "short side to 256"
    assert describe(96, KERAS, "NHWC")["scale"] == "x / 127.5 - 1"


def test_to_rgb_converts_and_says_so() -> None:
    rgb = picture(20, 10)
    assert to_rgb(rgb) == (rgb, None)
    for mode in ("L", "P", "RGBA", "CMYK", "LA"):
        out, note = to_rgb(rgb.convert(mode))
        assert out.mode == "RGB" and mode in note
    sixteen = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
    out, note = to_rgb(sixteen)
    assert "16-bit" in note
    np.testing.assert_array_equal(np.asarray(out)[0, :, 0], [0, 100, 255])  # scaled, not clipped at 255
    with pytest.raises(PreprocessError, match="mode"):
        to_rgb(Image.new("F", (4, 4)))


# -- the frameworks themselves (CI installs them: pip install -e '.[frameworks]') ---------------------------------
@pytest.mark.frameworks
@pytest.mark.parametrize("size", SIZES)
def test_keras_load_img_and_preprocess_input(tmp_path: Path, size: tuple[int, int]) -> None:
    keras = pytest.importorskip("keras")
    path = tmp_path / "image.png"
    picture(*size, seed=7).save(path)
    r = 96
    img = keras.utils.load_img(str(path), target_size=(r, r), interpolation="bilinear")
    ref = keras.applications.mobilenet_v2.preprocess_input(keras.utils.img_to_array(img))
    ours = preprocess(Image.open(path).convert("RGB"), r, KERAS, "NHWC")
    assert float(np.abs(ours - np.asarray(ref, np.float64)).max()) <= TOL


def _torchvision_transforms():  # noqa: ANN202
    pytest.importorskip("torch")
    # ENVIRONMENT.md: torchvision's compiled ops do not load beside the CPU torch build; transforms need none of them
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    try:
        from torchvision import transforms
    except Exception as exc:  # noqa: BLE001 - absent or unloadable: skip, as for any missing framework
        pytest.skip(f"torchvision unavailable: {exc}")
    return transforms


@pytest.mark.frameworks
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("r", [96, 224])
def test_torchvision_transforms(size: tuple[int, int], r: int) -> None:
    transforms = _torchvision_transforms()
    image = picture(*size, seed=11)
    pipeline = transforms.Compose([transforms.Resize(int(r * 256 / 224)), transforms.CenterCrop(r),
                                   transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ref = pipeline(image).numpy()
    ours = preprocess(image, r, TORCHVISION, "NCHW")
    assert ref.shape == ours.shape
    assert float(np.abs(ours - ref).max()) <= TOL
