"""``ddmr serve`` through Flask's test client: the example pair with the shipped
``brain-mr``, uploads with a tiny checkpoint, slices, downloads applied with SimpleITK,
and every kind of bad input (a 4xx with a message, the server going on, no folder left)."""

import io
import json
import threading

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from tiny_workspace import _box, _volume

pytest.importorskip("flask")

from ddmr_core.serve import create_app  # noqa: E402
from ddmr_core.serve.server import Server  # noqa: E402
from ddmr_core.serve.store import ResultStore  # noqa: E402
from ddmr_core.serve.view import VIEWS  # noqa: E402


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def example_app():
    """The default application: the shipped brain-mr model, the example pair."""
    app = create_app()
    yield app
    app.extensions["ddmr"].close()


@pytest.fixture(scope="module")
def example_result(example_app):
    r = example_app.test_client().post("/api/register", data={"source": "example"})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


@pytest.fixture(scope="module")
def tiny_server(tiny_workspace):
    """One server with the tiny 16^3 checkpoint, shared by the upload tests."""
    server = Server([tiny_workspace["good"]])
    yield server
    server.close()


@pytest.fixture
def tiny(tiny_server):
    """A test client of an application on the tiny server (1 MB upload limit)."""
    app = create_app(server=tiny_server, max_upload_mb=1)
    return app.test_client()


def nifti_bytes(data, affine=np.diag([1.5, 1.5, 1.5, 1.0]), gz=True):
    img = nib.Nifti1Image(data, affine)
    raw = img.to_bytes()
    if not gz:
        return raw
    import gzip

    return gzip.compress(raw)


def files(**named):
    """Form fields for the test client: role -> (bytes, client file name)."""
    return {role: (io.BytesIO(data), name) for role, (data, name) in named.items()}


def upload(client, **named):
    data = {"source": "upload", **files(**named)}
    return client.post("/api/register", data=data, content_type="multipart/form-data")


def pair(**extra):
    out = {"fixed": (nifti_bytes(_volume()), "f.nii.gz"), "moving": (nifti_bytes(_volume(seed=1)), "m.nii.gz")}
    out.update(extra)
    return out


def png_array(data):
    return np.asarray(Image.open(io.BytesIO(data)))


# ---------------------------------------------------------------- the page
def test_page_and_its_files_come_from_this_server(example_app):
    c = example_app.test_client()
    page = c.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Register" in html and 'name="fixed"' in html
    # nothing from elsewhere: every src/href is a path on this server
    import re

    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/"), url
        assert c.get(url).status_code == 200
    models = c.get("/api/models").get_json()
    assert models["default"] == "brain-mr" and [m["key"] for m in models["models"]] == ["brain-mr"]


# ----------------------------------------------------------- example pair
def test_example_pair_registers_and_improves_dice(example_result):
    m = example_result["metrics"]
    assert [d["name"] for d in m["dice"]] == ["CSF/other", "grey matter", "white matter"]
    # the pair is deformed, brain-mr registers it (docs/models.md: ~0.28 -> ~0.80)
    assert m["dice_mean"]["before"] < 0.4 and m["dice_mean"]["after"] > 0.7
    assert m["ncc"]["after"] > m["ncc"]["before"]
    assert 0 <= m["jacobian"]["folding_percent"] < 1
    assert example_result["has_labels"] and example_result["shape"] == [64, 64, 64]
    assert {d["name"] for d in example_result["downloads"]} >= {"field.nii.gz", "warped.nii.gz", "warped_seg.nii.gz"}
    assert example_result["timings_s"]["registration"] > 0


def test_slices_are_pngs_of_the_slice_asked_for(example_app, example_result):
    c, rid = example_app.test_client(), example_result["id"]
    view = example_app.extensions["ddmr"].store.get(rid)
    for ax in example_result["axes"]:
        k = ax["axis"]
        a, b = (i for i in range(3) if i != k)
        for name in VIEWS:
            r = c.get(f"/api/results/{rid}/slice/{name}/{k}/{ax['size'] // 2}.png")
            assert r.status_code == 200 and r.mimetype == "image/png"
            pic = png_array(r.data)
            scale = 1 if name != "grid" else pic.shape[0] // view.shape[b]
            assert pic.shape == (view.shape[b] * scale, view.shape[a] * scale, 3)
    # the fixed panel is the fixed volume's slice: rows = axis b from the top, columns = axis a
    k, i = 2, 30
    pic = png_array(c.get(f"/api/results/{rid}/slice/fixed/{k}/{i}.png").data)[..., 0].astype(float)
    expect = np.take(view.fixed, i, axis=k).T[::-1]
    assert np.corrcoef(pic.ravel(), expect.ravel())[0, 1] > 0.99
    # another slice is another picture; the label maps change the picture
    other = png_array(c.get(f"/api/results/{rid}/slice/fixed/{k}/{i + 5}.png").data)[..., 0]
    assert not np.array_equal(other, pic.astype(np.uint8))
    with_labels = png_array(c.get(f"/api/results/{rid}/slice/warped/{k}/{i}.png?labels=1").data)
    plain = png_array(c.get(f"/api/results/{rid}/slice/warped/{k}/{i}.png").data)
    assert not np.array_equal(with_labels, plain) and np.array_equal(plain[..., 0], plain[..., 1])


def test_jacobian_panel_marks_folds(example_app, example_result):
    """A field folded on purpose: the folded voxels are drawn in the fold colour, only they."""
    from ddmr_core.serve.slices import FOLD_COLOUR
    from ddmr_core.serve.view import ResultView

    res = example_app.extensions["ddmr"].store.get(example_result["id"]).result
    import dataclasses

    disp = np.zeros_like(res.disp)
    disp[2, :, :, 20:40] = -np.linspace(0, 30, 20)  # moves back faster than the grid: det < 0
    view = ResultView(dataclasses.replace(res, disp=disp), "/nonexistent")
    assert view.jacobian_stats["folding_percent"] > 0
    pic = view.picture("jacobian", 0, 32)
    fold = np.all(pic == np.array(FOLD_COLOUR, np.uint8), axis=2)
    expect = (np.take(view.jacobian, 32, axis=0) <= 0).T[::-1]
    assert fold.any() and np.array_equal(fold, expect)


def test_bad_slice_requests_are_4xx(example_app, example_result):
    c, rid = example_app.test_client(), example_result["id"]
    assert c.get(f"/api/results/{rid}/slice/fixed/2/64.png").status_code == 400
    assert c.get(f"/api/results/{rid}/slice/fixed/3/0.png").status_code == 400
    assert c.get(f"/api/results/{rid}/slice/secrets/2/0.png").status_code == 400
    assert c.get(f"/api/results/{rid}/slice/fixed/2/-1.png").status_code == 404
    assert c.get("/api/results/AAAAAAAAAAAAAAAAAAAAAA/slice/fixed/2/0.png").status_code == 404
    assert c.get("/api/results/../slice/fixed/2/0.png").status_code == 404


def test_downloaded_field_applied_by_simpleitk_gives_the_warped_image(example_app, example_result, tmp_path):
    from ddmr_core.serve.example import example_pair

    c, rid = example_app.test_client(), example_result["id"]
    for name in ("field.nii.gz", "field.npz", "warped.nii.gz", "fixed.nii.gz", "warped_seg.nii.gz",
                 "jacobian.nii.gz", "results.json"):
        r = c.get(f"/api/results/{rid}/files/{name}")
        assert r.status_code == 200, name
        assert "attachment" in r.headers["Content-Disposition"]
        (tmp_path / name).write_bytes(r.data)
    pair = example_pair()
    nib.save(nib.Nifti1Image(pair.moving, pair.affine), str(tmp_path / "moving.nii.gz"))
    field = sitk.ReadImage(str(tmp_path / "field.nii.gz"), sitk.sitkVectorFloat64)
    tx = sitk.DisplacementFieldTransform(field)
    ref = sitk.ReadImage(str(tmp_path / "fixed.nii.gz"))
    out = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(tmp_path / "moving.nii.gz"), sitk.sitkFloat64),
                                               ref, tx, sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
    warped = nib.load(str(tmp_path / "warped.nii.gz")).get_fdata()
    # where the field samples inside the moving image (outside, ITK and ddmr pad alike with 0,
    # but differ in the last half voxel); the moving image shares the fixed grid here
    with np.load(tmp_path / "field.npz") as z:
        disp, affine = z["disp"], z["affine"]
    assert np.allclose(affine, pair.affine)
    y = np.stack(np.meshgrid(*[np.arange(n) for n in warped.shape], indexing="ij"))
    inside = np.all((y + disp >= 0) & (y + disp <= np.array(warped.shape)[:, None, None, None] - 1), axis=0)
    assert inside.mean() > 0.5
    assert np.corrcoef(out[inside], warped[inside])[0, 1] > 0.999
    assert np.abs(out[inside] - warped[inside]).max() < 1e-3
    seg = np.asarray(nib.load(str(tmp_path / "warped_seg.nii.gz")).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 3}
    jac = nib.load(str(tmp_path / "jacobian.nii.gz")).get_fdata()
    assert abs(100 * np.mean(jac <= 0) - example_result["metrics"]["jacobian"]["folding_percent"]) < 1e-9
    assert json.loads((tmp_path / "results.json").read_text())["metrics"]["after"]["dice_mean"] == \
        pytest.approx(example_result["metrics"]["dice_mean"]["after"])


def test_only_fixed_names_can_be_downloaded(example_app, example_result):
    c, rid = example_app.test_client(), example_result["id"]
    for name in ("overview.png.bak", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "inputs", "outputs"):
        r = c.get(f"/api/results/{rid}/files/{name}")
        assert r.status_code == 404, name
        assert "error" in r.get_json()
    assert c.get("/api/results/nope/files/field.nii.gz").status_code == 404


# ----------------------------------------------------------------- uploads
def test_upload_with_label_maps(tiny, tiny_server):
    r = upload(tiny, **pair(fixed_seg=(nifti_bytes(_box()), "fs.nii.gz"),
                            moving_seg=(nifti_bytes(_box(1), gz=False), "ms.nii")))
    assert r.status_code == 200, r.get_json()
    j = r.get_json()
    assert j["inputs"] == {"fixed": "f.nii.gz", "moving": "m.nii.gz", "fixed_seg": "fs.nii.gz", "moving_seg": "ms.nii"}
    assert j["has_labels"] and [d["label"] for d in j["metrics"]["dice"]] == [1, 2]
    assert j["shape"] == [16, 16, 16]
    assert tiny.get(f"/api/results/{j['id']}/files/warped_seg.nii.gz").status_code == 200
    # the uploads are gone once the result is in memory; the result has its own folder
    folder = tiny_server.store.get(j["id"]).folder
    assert folder.parent == tiny_server.store.root and not (folder / "inputs").exists()


def test_upload_without_label_maps_has_no_dice_and_no_seg_download(tiny):
    r = upload(tiny, **pair())
    assert r.status_code == 200, r.get_json()
    j = r.get_json()
    assert "dice" not in j["metrics"] and not j["has_labels"]
    assert "warped_seg.nii.gz" not in {d["name"] for d in j["downloads"]}
    assert tiny.get(f"/api/results/{j['id']}/files/warped_seg.nii.gz").status_code == 404


BAD_UPLOADS = {
    # what, the uploads, words the message must hold, status
    "not NIfTI": (dict(moving=(b"this is not a NIfTI file", "notes.nii.gz")), ["notes.nii.gz", "NIfTI"], 400),
    "gzip, not NIfTI": (dict(moving=(__import__("gzip").compress(b"hello"), "x.nii.gz")), ["x.nii.gz", "NIfTI"], 400),
    "2-D image": (dict(fixed=(nifti_bytes(np.ones((16, 16), np.float32)), "slice.nii.gz")), ["slice.nii.gz", "3-D"], 400),
    "4-D image": (dict(fixed=(nifti_bytes(np.ones((16, 16, 16, 2), np.float32)), "series.nii.gz")),
                  ["series.nii.gz", "3-D"], 400),
    "label map of another shape": (dict(fixed_seg=(nifti_bytes(np.zeros((16, 16, 8), np.uint8)), "fs.nii.gz")),
                                   ["fs.nii.gz", "one grid"], 400),
    "label map of another grid": (dict(moving_seg=(nifti_bytes(_box(), np.diag([1.5, 1.5, 1.5, 1.0]) +
                                                               np.eye(4, k=3) * 5), "ms.nii.gz")),
                                  ["ms.nii.gz", "one grid"], 400),
    "label map with fractions": (dict(moving_seg=(nifti_bytes(np.full((16, 16, 16), 0.5, np.float32)), "p.nii.gz")),
                                 ["p.nii.gz", "label map"], 400),
    "RGB image": (dict(fixed=(nifti_bytes(np.zeros((16, 16, 16), [("R", "u1"), ("G", "u1"), ("B", "u1")])),
                              "rgb.nii.gz")), ["rgb.nii.gz", "integer or real"], 400),
    "constant image": (dict(moving=(nifti_bytes(np.zeros((16, 16, 16), np.float32)), "zero.nii.gz")),
                       ["zero.nii.gz", "constant"], 400),
    "empty file": (dict(moving=(b"", "empty.nii")), ["empty.nii", "empty"], 400),
    "no moving image": (dict(moving=None), ["moving image"], 400),
    "too large": (dict(moving=(b"\0" * (1 << 20), "big.nii")), ["limit", "1 MB"], 413),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_4xx_with_a_message_and_the_server_goes_on(tiny, tiny_server, case):
    change, words, status = BAD_UPLOADS[case]
    named = {k: v for k, v in pair(**change).items() if v is not None}
    before = sorted(p.name for p in tiny_server.store.root.iterdir())
    r = upload(tiny, **named)
    assert r.status_code == status, r.get_data(as_text=True)
    message = r.get_json()["error"]
    for w in words:
        assert w in message, message
    assert str(tiny_server.store.root) not in message and "/tmp" not in message
    # the request's folder is gone; the server still registers
    assert sorted(p.name for p in tiny_server.store.root.iterdir()) == before
    assert upload(tiny, **pair()).status_code == 200


def test_bad_form_values_are_400(tiny):
    r = tiny.post("/api/register", data={"source": "ftp://x"})
    assert r.status_code == 400 and "source" in r.get_json()["error"]
    r = tiny.post("/api/register", data={"source": "upload", "model": "../../good.pt", **files(**pair())},
                  content_type="multipart/form-data")
    assert r.status_code == 400 and "unknown model" in r.get_json()["error"]
    r = tiny.post("/api/register", data={"source": "upload", "grid": "huge", **files(**pair())},
                  content_type="multipart/form-data")
    assert r.status_code == 400 and "grid" in r.get_json()["error"]
    assert tiny.get("/api/nothing").status_code == 404


def test_posts_from_another_site_are_refused(tiny):
    r = tiny.post("/api/register", data={"source": "upload", **files(**pair())}, content_type="multipart/form-data",
                  headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.get_json()["error"]
    r = tiny.post("/api/register", data={"source": "upload", **files(**pair())}, content_type="multipart/form-data",
                  headers={"Origin": "http://localhost"})  # the page itself
    assert r.status_code == 200


def test_client_file_names_are_never_server_paths(tiny, tiny_server, tmp_path):
    evil = str(tmp_path / "planted.nii.gz")
    r = upload(tiny, fixed=(nifti_bytes(_volume()), "../../../../" + evil), moving=(b"junk", "../../m.nii"))
    assert r.status_code == 400
    assert not (tmp_path / "planted.nii.gz").exists()
    # shown by their last component only
    assert "'m.nii'" in r.get_json()["error"] and "/" not in r.get_json()["error"]
    r = upload(tiny, fixed=(nifti_bytes(_volume()), "../../../../" + evil), moving=(nifti_bytes(_volume(seed=1)), "m"))
    assert r.status_code == 200 and r.get_json()["inputs"]["fixed"] == "planted.nii.gz"
    assert not (tmp_path / "planted.nii.gz").exists()
    assert not any(p.name == "planted.nii.gz" for p in tiny_server.store.root.rglob("*"))


def test_concurrent_requests_keep_their_own_results(tiny, tiny_server):
    """Two pairs registered at once, several times: each answer is its own pair's."""
    a = pair()
    b = {"fixed": (nifti_bytes(_volume(seed=1)), "b_f.nii.gz"), "moving": (nifti_bytes(_volume(seed=3)), "b_m.nii.gz")}
    alone = {k: upload(tiny, **p).get_json()["metrics"]["ncc"] for k, p in (("a", a), ("b", b))}
    assert alone["a"] != alone["b"]
    answers, errors = [], []

    def worker(key, named):
        try:
            client = create_app(server=tiny_server).test_client()
            for _ in range(3):
                j = upload(client, **named).get_json()
                answers.append((key, j["inputs"]["fixed"], j["metrics"]["ncc"], j["id"]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k, p)) for k, p in (("a", a), ("b", b), ("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(answers) == 12
    for key, fixed_name, ncc, rid in answers:
        assert fixed_name == ("f.nii.gz" if key == "a" else "b_f.nii.gz")
        assert ncc == pytest.approx(alone[key], abs=1e-6)
    assert len({rid for *_, rid in answers}) == 12


# ------------------------------------------------------------ result store
def test_results_expire_and_are_bounded(tmp_path, monkeypatch):
    import ddmr_core.serve.store as store_mod

    now = [1000.0]
    monkeypatch.setattr(store_mod.time, "monotonic", lambda: now[0])
    store = ResultStore(tmp_path / "root", max_results=2, ttl_s=60)
    ids = []
    for value in ("a", "b", "c"):
        rid, folder = store.new_folder()
        (folder / "x").write_text(value)
        store.put(rid, folder, value)
        ids.append((rid, folder))
    # the least recently used went first, with its folder
    assert store.get(ids[0][0]) is None and not ids[0][1].exists()
    assert store.get(ids[1][0]) == "b" and store.get(ids[2][0]) == "c"
    now[0] += 30
    assert store.get(ids[2][0]) == "c"  # used: kept 60 s more
    now[0] += 45
    assert store.get(ids[1][0]) is None and not ids[1][1].exists()
    assert store.get(ids[2][0]) == "c"
    now[0] += 61
    assert len(store) == 0 and not ids[2][1].exists()
    assert store.get("../root") is None and store.get(str(tmp_path)) is None
    store.close()
    assert (tmp_path / "root").exists() and not any((tmp_path / "root").iterdir())


def test_own_root_is_removed_on_close():
    store = ResultStore()
    rid, folder = store.new_folder()
    store.put(rid, folder, 1)
    store.close()
    assert not store.root.exists()


def test_volume_over_the_voxel_limit_is_refused_from_its_header(tiny_workspace):
    server = Server([tiny_workspace["good"]], max_voxels=16 ** 3 - 1)
    try:
        r = upload(create_app(server=server).test_client(), **pair())
        assert r.status_code == 400
        assert "4096 voxels" in r.get_json()["error"] and "f.nii.gz" in r.get_json()["error"]
        assert not any(server.store.root.iterdir())
    finally:
        server.close()


def test_page_files_are_package_data():
    """Every file the page needs is installed with the package (setup.cfg's globs)."""
    import configparser
    import fnmatch
    from pathlib import Path

    import ddmr_core.serve as serve

    root = Path(__file__).resolve().parents[2]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    assert "ddmr_core.serve" in cfg["options"]["packages"].split()
    globs = [g.strip() for g in cfg["options.package_data"]["ddmr_core"].split(",")]
    pkg = Path(serve.__file__).parent
    needed = [p.relative_to(pkg.parent).as_posix() for d in ("templates", "static") for p in (pkg / d).iterdir()]
    assert {"serve/templates/index.html", "serve/static/app.js", "serve/static/app.css"} <= set(needed)
    for rel in needed:
        assert any(fnmatch.fnmatch(rel, g) for g in globs), rel
