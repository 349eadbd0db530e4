"""Grad-CAM / Grad-CAM++ / Score-CAM behind one interface; overlays; the border check; the CLI."""
import re

import keras
import numpy as np
import pytest

from cxr_tf.errors import CXRModelError
from cxr_tf.explain import (MIN_GRID, Explainer, attach_keras_model, border_mass, choose_target_layer, layer_grid,
                            load_keras_model, map_warnings, target_layer, uniform_border_share)
from cxr_tf.models import build_model

S = 32


def _blobs(n, rng):
    """An 8x8 object at a random place: class 1 a filled square, class 0 a hollow one.

    Returns images, labels and each object's top-left corner (the known evidence region).
    """
    x = rng.normal(0.3, 0.05, (n, S, S, 1)).astype("float32")
    y = np.arange(n) % 2
    pos = rng.integers(1, S - 9, (n, 2))
    for i, (r, c) in enumerate(pos):
        x[i, r:r + 8, c:c + 8] += 0.6
        if y[i] == 0:
            x[i, r + 2:r + 6, c + 2:c + 6] -= 0.6
    lo, hi = x.min((1, 2, 3), keepdims=True), x.max((1, 2, 3), keepdims=True)
    return (x - lo) / (hi - lo), y, pos  # per-image [0, 1], as cxr_tf's pipeline feeds models


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y, _ = _blobs(256, rng)
    m = build_model("tiny_cnn", num_classes=2, image_size=S, head="gap", freeze_until=0, bn_momentum=0.9,
                    class_names=["background", "top_left"])
    m.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, np.eye(2)[y], epochs=8, batch_size=32, verbose=0)
    xt, yt, pt = _blobs(16, np.random.default_rng(1))
    assert (m.predict(xt, verbose=0).argmax(1) == yt).mean() >= 0.9  # the model did learn the task
    return m, xt, yt, pt


@pytest.mark.parametrize("method,kw", [("gradcam", {}), ("gradcam++", {}), ("scorecam", {"max_n": 8})])
def test_cam_mass_falls_on_the_evidence(trained, method, kw):
    m, x, y, pos = trained
    sel, where = x[y == 1][:4], pos[y == 1][:4]
    cams = Explainer(m, method, **kw)(sel, class_index=1)
    assert cams.shape == (4, S, S) and cams.min() >= 0 and cams.max() <= 1
    shares = []
    for cam, (r, c) in zip(cams, where):
        box = np.zeros((S, S), bool)
        box[max(r - 4, 0):r + 12, max(c - 4, 0):c + 12] = True  # the object plus a 4 px margin
        shares.append(cam[box].sum() / cam.sum())
        pr, pc = np.unravel_index(cam.argmax(), cam.shape)
        assert box[pr, pc], (method, (pr, pc), (r, c))  # the peak lies on the object
    # the region is at most 16x16 = 25% of the image: a uniform map would put <= 0.25 there
    assert np.mean(shares) > 0.45, shares


def test_explaining_keeps_the_models_softmax(trained):
    m, x, _, _ = trained
    before = m.predict(x[:2], verbose=0)
    Explainer(m, "gradcam")(x[:2])
    after = m.predict(x[:2], verbose=0)
    np.testing.assert_allclose(after.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(before, after, atol=1e-6)


def test_target_layer_default_and_errors():
    m = build_model("tiny_cnn", num_classes=2, image_size=S, head="gap", freeze_until=0)
    assert target_layer(m) == m.cam_layer == "block3_relu"
    assert target_layer(m, "block2_conv") == "block2_conv"
    with pytest.raises(CXRModelError, match="no layer named 'conv9'.*block3_relu"):
        Explainer(m, "gradcam", layer="conv9")
    with pytest.raises(CXRModelError, match="'head_gap' .* not a 4D feature map"):
        target_layer(m, "head_gap")


# Every registered zoo family that builds small and fast: (backbone, image size, CAM grid side).
# CNNs at 64 px keep a >1x1 final map (stride 32: 2x2; SqueezeNet 3x3); vit_tiny has 8x8
# patches (8x8 token grid), hybrid_tiny a stride-8 CNN (8x8 grid); the d2w4 UNet encoder
# pools twice (16x16 bottleneck).
ZOO_CAM = [("tiny_cnn", 32, 8), ("resnet18", 64, 2), ("squeezenet", 64, 3), ("mobilenet", 64, 2),
           ("mobilenet_v2", 64, 2), ("resnet50", 64, 2), ("densenet121", 64, 2),
           ("unet_cbam_encoder_d2w4", 64, 16), ("vit_tiny", 64, 8), ("hybrid_tiny", 64, 8)]


def test_zoo_cam_list_covers_the_small_registered_families():
    from cxr_tf.models import get_backbone, list_backbones

    names = {n for n, _, _ in ZOO_CAM}
    # other sizes of the UNet encoder family (unet_cbam_encoder_d3w16...) register when another
    # test looks them up: the family is covered by its d2w4 member
    registered = {n for n in list_backbones() if not re.fullmatch(r"unet_cbam_encoder_d\d+w\d+", n)} | (
        names & {"unet_cbam_encoder_d2w4"})
    # the big presets (and the d4w32 UNet default) are the same builders at sizes too slow here
    assert registered - names == {"hybrid_resnet50", "vit_small", "vit_b16", "unet_cbam_encoder"}
    assert all(get_backbone(n).cam_layer for n in names)


@pytest.mark.parametrize("name,size,grid", ZOO_CAM)
def test_auto_layer_is_the_registered_cam_layer_when_its_map_is_large_enough(name, size, grid):
    from cxr_tf.models import get_backbone

    m = build_model(name, num_classes=3, image_size=size, head="gap", freeze_until=0)
    registered = get_backbone(name).cam_layer
    assert m.cam_layer == registered and target_layer(m) == registered
    # a 4D map (for ViTs: the tokens reshaped to their grid) on the expected grid
    assert tuple(m.get_layer(registered).output.shape[1:3]) == (grid, grid)
    ex = Explainer(m, "gradcam")
    if grid >= MIN_GRID:
        assert ex.layer == registered
    else:  # too coarse at this size: the deepest stage output with a >= 7x7 map instead
        assert ex.layer != registered and min(ex.grid) >= MIN_GRID, (ex.layer, ex.grid)
        assert registered in ex.layer_reason and f"{grid}x{grid}" in ex.layer_reason
    cams = ex(np.random.default_rng(0).random((2, size, size, 1)).astype("float32"))
    assert cams.shape == (2, size, size) and np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1


@pytest.mark.parametrize("size,expected,grid", [(64, "conv3_block4_out", 8), (128, "conv4_block6_out", 8),
                                                (224, "conv5_block3_out", 7)])
def test_resnet50_layer_choice_by_input_size(size, expected, grid):
    """The issue's case: conv5 is 2x2 at 64 px (all-zero Grad-CAM); the choice keeps >= 7x7 maps."""
    m = build_model("resnet50", num_classes=2, image_size=size, head="gap", freeze_until=0)
    layer, reason = choose_target_layer(m)
    assert layer == expected and layer_grid(m, layer) == (grid, grid)
    assert reason.startswith(f"CAM layer {expected} ({grid}x{grid} at {size} px")
    # an explicit layer is kept, even a coarse one
    assert Explainer(m, "gradcam", layer="conv5_block3_out").layer == "conv5_block3_out"


def test_tiny_input_picks_the_largest_map_and_says_so():
    m = build_model("resnet18", num_classes=2, image_size=32, head="gap", freeze_until=0)
    layer, reason = choose_target_layer(m)
    assert (layer, layer_grid(m, layer)) == ("conv2_block2_out", (8, 8)) and "would give 1x1" in reason
    m16 = build_model("resnet18", num_classes=2, image_size=8, head="gap", freeze_until=0)
    layer, reason = choose_target_layer(m16)
    assert "the largest this model has" in reason and min(layer_grid(m16, layer)) < MIN_GRID


def test_map_warnings():
    rng = np.random.default_rng(0)
    good = rng.random((2, 16, 16)).astype("float32")
    assert map_warnings(good) == []
    zero = np.zeros((16, 16), "float32")
    flat = np.full((16, 16), 0.5, "float32")
    w = map_warnings(np.stack([good[0], zero, flat]), ["a.png", "b.dcm", "c.png"])
    assert any(m.startswith("b.dcm: the map is all zero") for m in w)
    assert any(m.startswith("c.png: the map is nearly constant") for m in w)
    same = map_warnings(np.stack([good[0], good[0] + 0.001, good[0]]))
    assert len(same) == 1 and "identical" in same[0]


def test_auto_layer_prefers_the_registered_layer_over_the_last_4d_one():
    m = build_model("tiny_cnn", num_classes=2, image_size=S, head="gap", freeze_until=0)
    assert target_layer(m) == "block3_relu"
    m.cam_layer = "block2_conv"  # registered layer is not the last 4D layer
    assert target_layer(m) == "block2_conv"
    assert Explainer(m, "gradcam").layer == "block2_conv"
    # a plain functional model (no cam_layer) falls back to its last 4D layer
    inp = keras.Input((S, S, 1))
    a = keras.layers.Conv2D(2, 3, name="c1")(inp)
    b = keras.layers.Conv2D(2, 3, name="c2")(a)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(b))
    plain = keras.Model(inp, out)
    assert target_layer(plain) == "c2"
    with pytest.raises(CXRModelError, match=r"no layer named 'c9'.*\['c1', 'c2'\]"):
        target_layer(plain, "c9")


def test_border_mass():
    uniform = np.ones((1, 50, 50))
    assert border_mass(uniform, 0.1)[0] == pytest.approx(uniform_border_share(0.1)) == pytest.approx(0.36)
    frame = np.ones((50, 50))
    frame[5:45, 5:45] = 0
    centre = np.zeros((50, 50))
    centre[20:30, 20:30] = 1
    np.testing.assert_allclose(border_mass(np.stack([frame, centre]), 0.1), [1.0, 0.0])
    assert np.isnan(border_mass(np.zeros((1, 8, 8)))[0])


def test_explain_cli_on_export_dir_and_files(tmp_path, trained):
    from PIL import Image

    from cxr_tf.cli import main as cli

    m, x, y, _ = trained
    export = tmp_path / "saved_models" / "blobs" / "1"
    attach_keras_model(export, m)  # what the COVID experiments add to their exports
    assert load_keras_model(export).get_config() == m.get_config()
    files = []
    for i in (0, 1):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((x[i, ..., 0] * 255).astype("uint8")).save(p)
        files.append(str(p))
    out = tmp_path / "out"
    assert cli(["explain", "--model", str(export), *files, "--out", str(out), "--method", "gradcam++"]) == 0
    for i in (0, 1):
        for kind in ("heatmap", "overlay"):  # at the file's own resolution
            im = np.asarray(Image.open(out / f"img{i}_gradcampp_{kind}.png"))
            assert im.shape[:2] == (S, S)
        assert (out / f"img{i}_gradcampp_panel.png").is_file()
    import pandas as pd

    t = pd.read_csv(out / "explanations.csv")
    assert list(t["predicted"]) == [["background", "top_left"][k] for k in y[:2]]
    assert (t["layer"] == "block3_relu").all()
    assert cli(["explain", "--model", str(export), files[0], "--out", str(out), "--layer", "nope"]) == 2
    assert cli(["explain", "--model", str(tmp_path / "missing"), files[0]]) == 2
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert cli(["explain", "--model", str(export), str(tmp_path / "bad.png"), "--out", str(out)]) == 2


def test_explain_cli_on_a_dicom(tmp_path, trained, write_dicom):
    """A DICOM input (always generated here, never an optional file) gets its overlay; it holds
    the same pixels as a PNG (16-bit, x257), so per-image scaling makes both the same input."""
    import pandas as pd
    import pydicom
    from PIL import Image

    from cxr_tf.cli import main as cli

    m, x, _, _ = trained
    export = tmp_path / "model.keras"
    m.save(export)
    u8 = (x[0, ..., 0] * 255).astype("uint8")
    png, dcm = tmp_path / "ref.png", tmp_path / "scan.dcm"
    Image.fromarray(u8).save(png)
    write_dicom(dcm, u8.astype(np.uint16) * 257)
    assert pydicom.dcmread(dcm).pixel_array.max() == int(u8.max()) * 257  # a real DICOM file
    out = tmp_path / "out"
    assert cli(["explain", "--model", str(export), str(png), str(dcm), "--out", str(out)]) == 0
    overlay = out / "scan_gradcam_overlay.png"
    assert overlay.is_file()
    im = np.asarray(Image.open(overlay))
    assert im.shape[:2] == (S, S) and im.std() > 0
    for kind in ("heatmap", "overlay"):
        a = np.asarray(Image.open(out / f"scan_gradcam_{kind}.png"), float)
        b = np.asarray(Image.open(out / f"ref_gradcam_{kind}.png"), float)
        assert np.abs(a - b).max() <= 1, kind  # the DICOM decodes to the PNG's image
    t = pd.read_csv(out / "explanations.csv")
    assert list(t["file"]) == [str(png), str(dcm)]
    np.testing.assert_allclose(t.loc[1, ["p_background", "p_top_left"]].astype(float),
                               t.loc[0, ["p_background", "p_top_left"]].astype(float), atol=1e-5)


@pytest.mark.slow
def test_explain_real_dicom_and_jpeg_at_original_resolution(data_dir, tmp_path, capsys):
    """The issue's setting: a ResNet at 64 px explains a real DICOM and a Kermany JPEG on a >= 7x7 map,
    and writes overlays at each file's own resolution, with the layer choice printed."""
    from PIL import Image

    from cxr_tf.cli import main as cli
    from cxr_tf.io import read_image

    dcm = data_dir / "dicom" / "CR-MONO1-10-chest.dcm"
    jpg = next((data_dir / "kermany224" / "train" / "PNEUMONIA").iterdir())
    if not dcm.is_file():
        pytest.skip("CR-MONO1-10-chest.dcm not present")
    m = build_model("resnet18", num_classes=2, image_size=64, head="gap", freeze_until=0,
                    class_names=["normal", "pneumonia"])
    model = tmp_path / "m.keras"
    m.save(model)
    out = tmp_path / "out"
    assert cli(["explain", "--model", str(model), str(dcm), str(jpg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CAM layer conv3_block2_out (8x8 at 64 px; the registered conv5_block2_out would give 2x2" in printed
    for f in (dcm, jpg):
        h, w = read_image(f).shape
        assert np.asarray(Image.open(out / f"{f.stem}_gradcam_overlay.png")).shape[:2] == (h, w)
        assert np.asarray(Image.open(out / f"{f.stem}_gradcam_heatmap.png")).shape[:2] == (h, w)
        assert (out / f"{f.stem}_gradcam_panel.png").stat().st_size > 10_000


def test_explain_predicts_by_the_exports_threshold(tmp_path, trained):
    """A binary export's predicted (and explained) class is its served decision, not argmax."""
    import pandas as pd
    from PIL import Image

    from cxr_tf.cli import main as cli
    from cxr_tf.export import export_for_serving, load_exported

    m, x, _, _ = trained
    files = []
    for i in range(4):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((x[i, ..., 0] * 255).astype("uint8")).save(p)
        files.append(str(p))
    export = export_for_serving(m, tmp_path / "sm", "blobs", class_names=m.class_names, image_size=S,
                                threshold=0.999999).path
    out = tmp_path / "out"
    assert cli(["explain", "--model", str(export), *files, "--out", str(out)]) == 0
    t = pd.read_csv(out / "explanations.csv")
    served = load_exported(export).serve_bytes([open(f, "rb").read() for f in files])["decision"].astype(str)
    assert list(t["predicted"]) == list(served) == list(t["explained"])
    assert (t["p_top_left"] > 0.5).any() and (t["predicted"] == "background").all()  # argmax would differ
