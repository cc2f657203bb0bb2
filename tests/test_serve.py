"""`conceptvae serve`'s HTTP API on a tiny random model, through FastAPI's test client (and, for
the concurrency test, a real uvicorn server on a free port).

What a caller relies on: an upload gives an id and the faces found; an edit changes the face and
nothing far from it, and matches what `conceptvae edit` writes (format, EXIF, pixels); every bad
input (a bad file, a bad expression, an expired id, an oversize body) is a one-line JSON error
with a 4xx status; the photo store stays within its bounds; and the server keeps answering under
a burst of mixed good and bad requests from several clients at once.
"""

from __future__ import annotations

import concurrent.futures
import io
import socket
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_edit import _bomb_png, _truncated_jpeg, face_photo, make_run
from test_faces import _background

from conceptvae.cli import cli
from conceptvae.edit import EditPipeline
from conceptvae.faces import photo_mask
from conceptvae.images import write_image

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conceptvae.serve import ServeLimits, create_app  # noqa: E402
from conceptvae.serve.app import STATIC, _region  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")
MAKE = 0x010F  # EXIF tag: camera make


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def pipe(run_dir):
    return EditPipeline.from_pretrained(run_dir)


@pytest.fixture(scope="module")
def client(pipe):
    return TestClient(create_app(pipe, threads=1))


@pytest.fixture(scope="module")
def photo():
    return face_photo()  # (300, 360, 3): a SynthFace pasted into a gradient at (180, 150)


def jpeg_bytes(a: np.ndarray, exif: bool = True) -> bytes:
    buf = io.BytesIO()
    kw = {}
    if exif:
        e = Image.Exif()
        e[MAKE] = "ServeTestCam"
        kw["exif"] = e.tobytes()
    Image.fromarray(a).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def upload(client, data: bytes, name: str = "me.jpg", **form):
    return client.post("/api/photos", files={"file": (name, data, "image/jpeg")}, data=form)


def one_line_error(r, status: int, *fragments: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert msg and "\n" not in msg and "Traceback" not in msg
    assert "conceptvae-serve-" not in msg  # the server's temporary path never shows
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


@pytest.fixture(scope="module")
def uploaded(client, photo):
    r = upload(client, jpeg_bytes(photo))
    assert r.status_code == 201, r.text
    return r.json()


# ---------------------------------------------------------------------------------------------
# uploads and edits


def test_upload_gives_an_unguessable_id_the_size_and_the_face(client, photo, uploaded):
    info = uploaded
    assert (info["width"], info["height"]) == (360, 300) and info["format"] == "JPEG"
    assert len(info["id"]) == 22  # 128 random bits, URL-safe
    again = upload(client, jpeg_bytes(photo)).json()
    assert again["id"] != info["id"]
    [face] = info["faces"]
    x, y, w, h = face["box"]
    assert abs(x + w / 2 - 180) < 40 and abs(y + h / 2 - 150) < 50  # the face pasted at (180, 150)
    assert isinstance(face["psnr"], float)
    # a random-init model reconstructs nothing: the far-from-data warning is given, as one line
    assert face["far"] and "far from the training data" in face["warnings"][0]
    assert client.get(f"/api/photos/{info['id']}").json() == info


def test_no_edit_returns_the_photo_and_an_edit_changes_the_face_only(client, photo, uploaded):
    pid = uploaded["id"]
    r = client.post(f"/api/photos/{pid}/edit", json={"size": "full", "format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    original = decode(r.content)
    assert np.array_equal(original, decode(jpeg_bytes(photo)))  # no edit: the upload's pixels
    r = client.post(
        f"/api/photos/{pid}/edit",
        json={"strengths": {"Smiling": 2.0}, "blend": "residual", "size": "full", "format": "png"},
    )
    assert r.status_code == 200 and r.headers["x-edit"] == "+2*Smiling"
    edited = decode(r.content)
    assert edited.shape == original.shape
    moved = np.abs(edited.astype(int) - original).max(-1) > 0
    assert moved.sum() > 200  # the face changed
    pipe_mask = photo_mask(_aligned(client, pid), original.shape)
    assert not moved[pipe_mask == 0].any()  # nothing outside the face mask


def _aligned(client, pid):
    service = client.app.state.service
    return service.store.get(pid).aligned[0]


@pytest.mark.parametrize("blend", ["local", "residual", "replace", "poisson"])
def test_edits_match_the_pipelines_own_edit_of_the_whole_photo(client, pipe, photo, blend):
    """The server renders only the face's region of the photo; the result is the pipeline's."""
    pid = upload(client, png_bytes(photo), "p.png").json()["id"]
    r = client.post(
        f"/api/photos/{pid}/edit",
        json={"edit": "Smiling+1.5-0.5*Male", "blend": blend, "size": "full", "format": "png"},
    )
    ours = decode(r.content).astype(int)
    ref = np.asarray(pipe(Image.fromarray(photo), "Smiling+1.5-0.5*Male", blend=blend)).astype(int)
    assert (ref != photo).any()
    # the same pixels, up to OpenCV's fixed-point warp coordinates (1/32 pixel) moved by the
    # region's offset: a few levels on a handful of pixels
    diff = np.abs(ours - ref)
    assert diff.mean() < 0.02 and (diff > 2).mean() < 1e-3 and diff.max() <= 12


def test_full_size_download_keeps_format_and_exif_like_the_cli(client, pipe, photo, tmp_path):
    data = jpeg_bytes(photo)
    pid = upload(client, data, "holiday.jpg").json()["id"]
    r = client.post(
        f"/api/photos/{pid}/edit", json={"edit": "Smiling", "strength": 1.5, "size": "full"}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert 'filename="holiday_edited.jpg"' in r.headers["content-disposition"]
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.format == "JPEG" and im.size == (360, 300)
        assert im.getexif().get(MAKE) == "ServeTestCam"
    (tmp_path / "in.jpg").write_bytes(data)
    cli_out = tmp_path / "cli.jpg"
    prepared = pipe.prepare(tmp_path / "in.jpg")
    write_image(pipe(prepared, "Smiling", 1.5), cli_out, like=prepared.photo)
    diff = np.abs(decode(r.content).astype(int) - decode(cli_out.read_bytes()))
    assert diff.mean() < 0.05 and (diff > 2).mean() < 1e-3  # the same edit, written the same way


def test_preview_is_a_small_jpeg_of_the_same_edit(pipe, photo):
    small = TestClient(create_app(pipe, limits=ServeLimits(preview_side=150), threads=1))
    pid = upload(small, png_bytes(photo), "p.png").json()["id"]
    body = {"strengths": {"Smiling": 2.0}}
    r = small.post(f"/api/photos/{pid}/edit", json=body)
    assert r.headers["content-type"] == "image/jpeg" and decode(r.content).shape == (125, 150, 3)
    r = small.post(f"/api/photos/{pid}/edit", json={**body, "format": "png"})
    preview = decode(r.content).astype(float)
    before = decode(small.get(f"/api/photos/{pid}/image").content).astype(float)
    assert preview.shape == before.shape == (125, 150, 3)
    full = small.post(f"/api/photos/{pid}/edit", json={**body, "size": "full", "format": "png"})

    def shrink(a):
        return np.asarray(Image.fromarray(a).resize((150, 125), Image.Resampling.BOX), float)

    change_preview = np.abs(preview - before).sum(-1)
    change_full = np.abs(shrink(decode(full.content)) - shrink(photo)).sum(-1)
    assert (change_preview > 10).sum() > 20  # the preview shows the edit ...
    # ... where the full-size edit makes it
    assert np.corrcoef(change_preview.ravel(), change_full.ravel())[0, 1] > 0.7


def test_expression_and_strengths_are_the_same_edit(client, uploaded):
    pid = uploaded["id"]
    a = client.post(f"/api/photos/{pid}/edit", json={"edit": "Smiling+1.5-0.5*Male"})
    b = client.post(f"/api/photos/{pid}/edit", json={"strengths": {"smiling": 1.5, "Male": -0.5}})
    c = client.post(f"/api/photos/{pid}/edit", json={"edit": "Smiling-Male/3"})
    assert a.status_code == b.status_code == 200 and a.content == b.content
    assert a.headers["x-edit"] == b.headers["x-edit"] == "+1.5*Smiling -0.5*Male"
    one_line_error(c, 400, "Smiling-Male/3")


def test_bad_edits_are_one_line_4xx(client, uploaded):
    pid = uploaded["id"]
    post = lambda body: client.post(f"/api/photos/{pid}/edit", json=body)  # noqa: E731
    one_line_error(post({"edit": "Smilng+1"}), 400, "did you mean 'Smiling'")
    one_line_error(post({"strengths": {"Eyeglases": 1}}), 400, "did you mean 'Eyeglasses'")
    one_line_error(post({"strengths": {"Smiling": 50}}), 422, "between -10 and 10")
    one_line_error(post({"edit": "Smiling", "face": 3}), 422, "face 3 is out of range")
    one_line_error(post({"edit": "Smiling", "blend": "soft"}), 422, "blend")
    one_line_error(post({"edit": "Smiling", "face": "x"}), 422, "face")
    one_line_error(post({"edit": "Smiling", "refine": 1000}), 422, "refine must be 0..200")
    r = client.post(f"/api/photos/{pid}/edit", content=b"{not json", headers={
        "content-type": "application/json"})  # fmt: skip
    one_line_error(r, 422)


def test_refine_fits_the_face_better(client, uploaded):
    pid = uploaded["id"]
    body = {"edit": "Smiling+1", "size": "full", "format": "png"}
    plain = client.post(f"/api/photos/{pid}/edit", json=body)
    refined = client.post(f"/api/photos/{pid}/edit", json={**body, "refine": 20})
    assert refined.status_code == 200 and refined.content != plain.content


def test_sweep_gif_has_a_frame_per_strength(client, uploaded):
    pid = uploaded["id"]
    r = client.post(f"/api/photos/{pid}/sweep", json={"sweep": "Smiling=-2:2:5"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (360, 300) and im.n_frames == 8  # 5 there and 3 back
        im.seek(0)
        first = np.asarray(im.convert("RGB")).copy()
        im.seek(4)
        last = np.asarray(im.convert("RGB"))
    assert (first != last).any()
    one_line_error(client.post(f"/api/photos/{pid}/sweep", json={"sweep": "Smiling"}), 400, "=")


def test_parse_checks_expressions(client):
    r = client.post("/api/parse", json={"edit": "smiling + 1.5 - 0.5*male"})
    assert r.status_code == 200 and r.json()["edit"] == "+1.5*Smiling -0.5*Male"
    one_line_error(client.post("/api/parse", json={"edit": "Smiling +* 2"}), 400, "position")


def test_random_faces_are_editable(client):
    for kind in ("prior", "synthface"):
        r = client.post("/api/random", json={"kind": kind, "seed": 3})
        assert r.status_code == 201, r.text
        info = r.json()
        assert len(info["faces"]) == 1
        e = client.post(f"/api/photos/{info['id']}/edit", json={"edit": "Smiling+2"})
        assert e.status_code == 200 and e.headers["content-type"] == "image/jpeg"
    assert client.post("/api/random").status_code == 201  # no body: a prior sample


def test_vectors_health_docs_and_the_page(client):
    v = client.get("/api/vectors").json()
    names = {x["name"]: x for x in v["vectors"]}
    assert set(names) == {"Smiling", "Male", "Eyeglasses"}
    assert names["Smiling"]["footprint"] and not names["Eyeglasses"]["footprint"]
    assert v["blends"][0] == "auto"
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["limits"]["max_upload_bytes"] == 25 * 2**20
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/photos", "/api/photos/{photo_id}/edit", "/api/vectors", "/api/random"):
        assert p in paths
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for f in STATIC.iterdir():  # works with no network: nothing fetched from elsewhere
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    one_line_error(client.get("/static/../app.py"), 404)


def test_shipped_model_lists_recommended_strengths():
    app = create_app("synthfaces64", threads=1)
    v = TestClient(app).get("/api/vectors").json()
    assert v["model"] == "synthfaces64" and len(v["vectors"]) >= 36
    smiling = next(x for x in v["vectors"] if x["name"] == "Smiling")
    assert smiling["recommended"] == {"add": 1.0, "remove": -1.0}
    assert smiling["add"]["success_at_1"] >= 0.9 and smiling["method"]
    assert any(x["problems"] for x in v["vectors"])  # flagged vectors say why


# ---------------------------------------------------------------------------------------------
# bad uploads and limits


def _cat() -> bytes:
    from skimage import data

    return png_bytes(data.chelsea())


BAD_UPLOADS = {  # name: (bytes maker, status, what the message says)
    "empty.jpg": (lambda: b"", 400, "empty (0 bytes)"),
    "notes.jpg": (lambda: b"just some notes, not a photo\n", 400, "is a text file"),
    "cut.jpg": (lambda: _truncated_jpeg(face_photo()), 400, "truncated or damaged"),
    "dot.png": (lambda: png_bytes(np.zeros((1, 1, 3), np.uint8)), 400, "1 x 1 pixels"),
    "wall.png": (lambda: png_bytes(_background(300, 300, 1)), 400, "no face found in wall.png"),
    "cat.png": (_cat, 400, "no face found in cat.png"),
    "huge.png": (_bomb_png, 400, "30000 x 30000 = 900.0 megapixels"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_upload_is_one_line_4xx_naming_it(client, name):
    make, status, fragment = BAD_UPLOADS[name]
    msg = one_line_error(upload(client, make(), name), status, fragment, name)
    assert "--no-align" not in msg  # the API's own words: align=false
    assert client.get("/api/health").json()["status"] == "ok"


def test_no_face_works_with_align_false(client):
    r = upload(client, png_bytes(_background(300, 300, 1)), "wall.png", align="false")
    assert r.status_code == 201 and r.json()["faces"][0]["box"] == [0, 0, 300, 300]


def test_client_file_names_never_become_paths(client, photo):
    r = upload(client, jpeg_bytes(photo), "../../etc/passwd")
    assert r.status_code == 201 and r.json()["name"] == "passwd"
    r = upload(client, b"", "../../x/evil name;rm.jpg")
    one_line_error(r, 400, "evil_name_rm.jpg is empty")


def test_upload_cap_is_413_before_reading_it(pipe, photo):
    good = jpeg_bytes(photo, exif=False)
    cap = len(good) + 1000
    small = TestClient(create_app(pipe, limits=ServeLimits(max_upload_bytes=cap), threads=1))
    big = jpeg_bytes(np.random.default_rng(0).integers(0, 255, (600, 600, 3), np.uint8))
    assert len(big) > cap + 64 * 1024
    one_line_error(upload(small, big, "big.jpg"), 413, "more than the limit of")
    r = small.post("/api/parse", content=b"x" * (2**20 + 10), headers={
        "content-type": "application/json"})  # fmt: skip
    one_line_error(r, 413, "more than the limit")
    assert upload(small, good, "ok.jpg").status_code == 201


def test_store_drops_the_least_recently_used_and_says_upload_again(pipe, photo):
    c = TestClient(create_app(pipe, limits=ServeLimits(max_photos=2), threads=1))
    ids = [upload(c, jpeg_bytes(photo), f"{i}.jpg").json()["id"] for i in range(2)]
    assert c.post(f"/api/photos/{ids[0]}/edit", json={"edit": "Smiling"}).status_code == 200
    third = upload(c, jpeg_bytes(photo), "2.jpg").json()["id"]  # drops ids[1], used least lately
    msg = one_line_error(c.get(f"/api/photos/{ids[1]}"), 404, "upload it again")
    assert ids[1] in msg
    for pid in (ids[0], third):
        assert c.get(f"/api/photos/{pid}").status_code == 200
    one_line_error(c.post("/api/photos/nope/edit", json={}), 404, "upload it again")
    assert c.delete(f"/api/photos/{third}").status_code == 200
    one_line_error(c.get(f"/api/photos/{third}"), 404)
    # the byte bound: a store that holds one photo's pixels
    one = photo.nbytes + 64 * 1024 + 50_000
    c = TestClient(create_app(pipe, limits=ServeLimits(max_store_bytes=one + 1000), threads=1))
    a = upload(c, jpeg_bytes(photo), "a.jpg").json()["id"]
    b = upload(c, jpeg_bytes(photo), "b.jpg").json()["id"]
    assert (
        c.get(f"/api/photos/{a}").status_code == 404
        and c.get(f"/api/photos/{b}").status_code == 200
    )
    h = c.get("/api/health").json()
    assert h["photos"] == 1 and h["store_bytes"] <= one + 1000


def test_region_covers_the_crop():
    """The region rendered holds every photo pixel the face mask touches."""
    photo = face_photo()
    pipe_ = EditPipeline.__new__(EditPipeline)  # only the frame is needed
    from conceptvae.data import Frame
    from conceptvae.faces import align_face, find_faces

    pipe_.frame = Frame(image_size=64, crop=148.0)
    aligned = align_face(photo, find_faces(photo)[0], pipe_.frame)
    x0, y0, x1, y1 = _region(aligned, photo.shape)
    mask = photo_mask(aligned, photo.shape) > 0
    ys, xs = np.nonzero(mask)
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    assert (x1 - x0) * (y1 - y0) < 0.6 * photo.shape[0] * photo.shape[1]


# ---------------------------------------------------------------------------------------------
# a real server under a burst of mixed requests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_200_mixed_requests_from_4_clients(pipe, photo):
    import httpx
    import uvicorn

    limits = ServeLimits(max_photos=5, workers=2)
    app = create_app(pipe, limits=limits, threads=1)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        good = jpeg_bytes(photo)
        bad = [(n, make()) for n, (make, _, _) in BAD_UPLOADS.items() if n != "huge.png"]
        with httpx.Client(base_url=base, timeout=60) as c:
            pid = c.post("/api/photos", files={"file": ("a.jpg", good)}).json()["id"]
            reference = c.post(f"/api/photos/{pid}/edit", json={"edit": "Smiling+1.5"}).content

        def one(i: int) -> tuple[str, int, bytes]:
            with httpx.Client(base_url=base, timeout=60) as c:
                kind = i % 5
                if kind == 0:
                    r = c.post("/api/photos", files={"file": (f"{i}.jpg", good)})
                    return "upload", r.status_code, b""
                if kind == 1:
                    name, data = bad[i % len(bad)]
                    r = c.post("/api/photos", files={"file": (name, data)})
                    return "bad upload", r.status_code, r.content
                if kind == 2:
                    r = c.post(f"/api/photos/{pid}/edit", json={"edit": "Smiling+1.5"})
                    return "edit", r.status_code, r.content
                if kind == 3:
                    r = c.post(f"/api/photos/{pid}/edit", json={"edit": "Smiling++"})
                    return "bad edit", r.status_code, r.content
                r = c.post("/api/photos/AAAAAAAAAAAAAAAAAAAAAA/edit", json={"edit": "Smiling"})
                return "unknown id", r.status_code, r.content

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            results = list(ex.map(one, range(200)))
        with httpx.Client(base_url=base, timeout=60) as c:
            health = c.get("/api/health").json()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    by_kind: dict[str, set[int]] = {}
    for kind, status, _ in results:
        by_kind.setdefault(kind, set()).add(status)
    # the edited photo may be dropped from the 5-photo store by the uploads: then a clear 404
    assert by_kind["upload"] == {201}
    assert by_kind["bad upload"] == {400}
    assert by_kind["edit"] <= {200, 404} and 200 in by_kind["edit"]
    assert by_kind["bad edit"] <= {400, 404} and 400 in by_kind["bad edit"]
    assert by_kind["unknown id"] == {404}
    for kind, status, content in results:
        if kind == "edit" and status == 200:
            assert content == reference  # concurrent edits give the same bytes as one alone
    assert health["status"] == "ok"
    assert health["photos"] <= limits.max_photos
    assert health["store_bytes"] <= limits.max_store_bytes


def test_serve_command_refuses_a_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(cli, ["serve", "--port", str(port)])
    assert r.exit_code == 1
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and f"cannot serve on 127.0.0.1:{port}" in lines[0]


def test_an_edit_in_the_browser_uses_the_face_s_swap(run_dir, photo, tmp_path):
    """A bank whose classifier puts the face in Smiling's class, with a swap adding Male to
    such faces: the served edit is the swap's (as `conceptvae edit` makes it), not Male's."""
    from attributes.bank import VectorBank
    from attributes.groups import GroupClassifier

    out = {}
    for label in ("plain", "swap"):
        pipe = EditPipeline.from_pretrained(run_dir)
        b, d = pipe.bank, pipe.bank.dim
        if label == "swap":
            clf = GroupClassifier(("Smiling", "Male"), np.zeros((3, d)), np.array([5.0, 0, 0]))
            pipe.bank = VectorBank({n: b[n] for n in b.names}, metadata=b.metadata,
                                   footprints=b.footprints, groups=[clf],
                                   swaps={"Male": {"Smiling": np.full(d, 3.0)}})  # fmt: skip
        c = TestClient(create_app(pipe, threads=1))
        pid = upload(c, png_bytes(photo), "me.png").json()["id"]
        r = c.post(
            f"/api/photos/{pid}/edit", json={"edit": "Male", "size": "full", "format": "png"}
        )
        assert r.status_code == 200, r.text
        out[label] = decode(r.content).astype(int)
        (tmp_path / "me.png").write_bytes(png_bytes(photo))
        out[label + "_cli"] = np.asarray(pipe(pipe.prepare(tmp_path / "me.png"), "Male")).astype(
            int
        )
    assert np.abs(out["swap"] - out["plain"]).max() > 30  # a different step, clearly
    for label in ("plain", "swap"):
        diff = np.abs(out[label] - out[label + "_cli"])
        assert diff.mean() < 0.02 and diff.max() <= 12
