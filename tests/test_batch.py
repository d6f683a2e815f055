"""The batch engine: a job's items exactly once (a crash mid-run and a rerun give an uninterrupted run's files,
bitwise), independent of the process split, and bad jobs refused before anything is written."""

import json
import os
import signal
import subprocess
import sys
import time
from io import BytesIO

import numpy as np
import pytest

from jaxedit import batch
from jaxedit.cli.main import main
from jaxedit.io import images as imio

PSNR_BF16_MIN = 46.0  # dB vs float32 images: measured 49.5 on this job (bench_batch: 4096 seeds)


@pytest.fixture(scope="module")
def job_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("job")
    np.save(d / "dirs.npy", np.random.RandomState(0).randn(2, 64).astype(np.float32))
    job = {"generator": None, "inputs": {"seeds": "0-19"},
           "edits": [{"method": "linear", "directions": "dirs.npy", "k": 1, "t": [0.0, 2.0], "space": "w",
                      "layers": [0, 4]}],
           "outputs": {"images": True, "latents": True}, "shard_size": 8, "batch_size": 4}
    (d / "job.json").write_text(json.dumps(job))
    return d / "job.json"


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "manifest" not in p.parts and p.name != "job.json"}


@pytest.fixture(scope="module")
def whole(job_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    assert main(["batch", str(job_file), "--out", str(out)]) == 0
    return out


def test_every_item_once_with_the_edit_applied(whole, job_file):
    items = batch.load_items(whole)
    assert list(items["index"]) == [i for i in range(20) for _ in range(2)]
    assert sorted(p.name for p in (whole / "images").iterdir())[:3] == ["00000000-000.png", "00000000-001.png",
                                                                       "00000001-000.png"]
    assert len(list((whole / "images").iterdir())) == 40 and len(list((whole / "manifest").iterdir())) == 3
    d = np.load(job_file.parent / "dirs.npy")[1]
    diff = items["latent"][1::2] - items["latent"][0::2]  # variant 1 (t = 2) minus variant 0 (t = 0)
    np.testing.assert_allclose(diff[:, :4], np.broadcast_to(2 * d, (20, 4, 64)), atol=1e-5)
    assert np.all(diff[:, 4:] == 0)  # outside the layer range


def test_two_processes_give_the_same_files(whole, job_file, tmp_path):
    out = tmp_path / "split"
    for i in (1, 0):
        assert main(["batch", str(job_file), "--out", str(out), "--process-count", "2", "--process-index", str(i)]) == 0
    assert _files(out) == _files(whole)


def test_two_processes_through_jax_distributed_on_loopback_give_the_same_files(whole, job_file, tmp_path):
    """``--num-processes 2``: two processes joined by jax.distributed (a free loopback port), as on two hosts."""
    out = tmp_path / "distributed"
    r = subprocess.run([sys.executable, "-m", "jaxedit.cli.main", "batch", str(job_file), "--out", str(out),
                        "--num-processes", "2"], capture_output=True, text=True, check=False)  # conftest's XLA_FLAGS
    assert r.returncode == 0, r.stderr[-2000:]
    assert "batch: 2 processes done; 3 of 3 shards committed" in r.stdout, r.stdout
    assert _files(out) == _files(whole)
    procs = sorted(json.loads(f.read_text())["process"] for f in (out / "manifest").iterdir())
    assert procs == [0, 0, 1]  # shard s by process s % 2


@pytest.fixture(scope="module")
def image_job(whole, job_file, tmp_path_factory):
    """Six of the engine's own 32 px renders as an image folder (with a file that is not an image), inverted by
    the encoder and 2 hybrid projector steps, then edited."""
    d = tmp_path_factory.mktemp("imgjob")
    (d / "photos").mkdir()
    for i, name in enumerate(["b.png", "a.png", "f.png", "c.png", "e.png", "d.png"]):
        (d / "photos" / name).write_bytes((whole / "images" / f"{i:08d}-000.png").read_bytes())
    (d / "photos" / "notes.txt").write_text("not an image")
    job = {**json.loads(job_file.read_text()), "inputs": {"images": "photos", "invert_steps": 2, "invert_loss": "pixel"},
           "shard_size": 4, "batch_size": 2,
           "outputs": {"images": True, "latents": True, "records": batch.ArrayRecordWriter is not None}}
    job["edits"][0]["directions"] = str(job_file.parent / "dirs.npy")
    (d / "job.json").write_text(json.dumps(job))
    return d / "job.json"


def test_an_image_folder_is_inverted_on_the_fly_independently_of_the_process_split(image_job, job_file, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["batch", str(image_job), "--out", str(one)]) == 0
    for i in (1, 0):
        assert main(["batch", str(image_job), "--out", str(two), "--process-count", "2", "--process-index", str(i)]) == 0
    assert _files(two) == _files(one)
    items = batch.load_items(one)
    assert list(items["index"]) == [i for i in range(6) for _ in range(2)]
    assert list(items["name"][::2]) == ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]  # sorted by name
    assert [f[0] for f in json.loads((one / "job.json").read_text())["job"]["image_files"]] == list(items["name"][::2])
    assert len(list((one / "images").iterdir())) == 12
    d = np.load(job_file.parent / "dirs.npy")[1]
    diff = items["latent"][1::2] - items["latent"][0::2]
    np.testing.assert_allclose(diff[:, :4], np.broadcast_to(2 * d, (6, 4, 64)), atol=1e-5)
    if batch.ArrayRecordWriter is None:
        return  # outputs.records needs the optional array-record package (jaxedit[records])
    from array_record.python.array_record_module import ArrayRecordReader
    from PIL import Image

    recs = []
    for f in sorted((one / "records").iterdir()):
        r = ArrayRecordReader(str(f))
        recs += [dict(np.load(BytesIO(b))) for b in r.read_all()]
        r.close()
    assert [(int(q["index"]), int(q["variant"])) for q in recs] == list(zip(items["index"], items["variant"]))
    np.testing.assert_array_equal(np.stack([q["latent"] for q in recs]), items["latent"])
    assert [str(q["name"]) for q in recs] == list(items["name"])
    png = np.asarray(Image.open(one / "images" / "00000003-001.png"))
    np.testing.assert_array_equal(recs[7]["image"], png)


def test_a_text_mapper_edit_and_a_local_style_edit_in_a_job(tmp_path):
    """A StyleCLIP latent mapper checkpoint as a W+ edit (``w + t * strength * M_k(w)``), then a Latents2Semantics
    style-noise edit of the synthesized images (region 'body' of the embedded model; latents untouched)."""
    import jax
    from PIL import Image

    from jaxedit.models import mapper as mapper_lib

    M = mapper_lib.Mapper(mapper_lib.MapperConfig.for_generator(8, 64))
    params = jax.tree.map(lambda *a: np.stack(a), *(M.init(jax.random.key(i)) for i in range(2)))
    mapper_lib.save_mappers(tmp_path / "mapper", M, params, ["a red circle", "a blue square"])
    job = {"inputs": {"seeds": "0-4"},
           "edits": [{"method": "mapper", "directions": "mapper", "k": 1, "t": [0, 1]},
                     {"method": "local-style", "region": "body", "t": [0, 1.5], "seed": 3}],
           "outputs": {"images": True, "latents": True}, "batch_size": 4}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main(["batch", str(tmp_path / "job.json"), "--out", str(tmp_path / "out")]) == 0
    items = batch.load_items(tmp_path / "out")
    lat = items["latent"].reshape(5, 4, 8, 64)  # variants (mapper t, sigma): (0, 0), (0, 1.5), (1, 0), (1, 1.5)
    np.testing.assert_array_equal(lat[:, 1], lat[:, 0])  # the local style edits images only
    np.testing.assert_array_equal(lat[:, 3], lat[:, 2])
    want = lat[:, 0] + 0.1 * np.asarray(M.delta(jax.tree.map(lambda a: a[1], params), lat[:, 0]))
    np.testing.assert_allclose(lat[:, 2], want, atol=1e-5)
    assert float(np.abs(lat[:, 2] - lat[:, 0]).max()) > 1e-3  # the mapper did move them
    img = lambda i, v: np.asarray(Image.open(tmp_path / "out" / "images" / f"{i:08d}-{v:03d}.png")).astype(int)
    changed = np.mean([(img(i, 1) != img(i, 0)).any(-1).mean() for i in range(5)])
    assert 0.02 < changed < 0.6, changed  # inside the body region only (measured 0.14-0.19 of the pixels)


def test_sigkill_mid_run_then_rerun_is_exactly_the_uninterrupted_run(whole, job_file, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jaxedit.cli.main", "batch", str(job_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "manifest" / "shard-000000.json").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(list((out / "manifest").iterdir()))
    assert 1 <= committed <= 3
    assert subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    assert _files(out) == _files(whole)


def test_bad_jobs_are_refused_before_anything_is_written(job_file, tmp_path, capsys):
    good = json.loads(job_file.read_text())
    cases = [({"inputs": {"seeds": "a-b"}}, "inputs.seeds"),
             ({"edits": [{**good["edits"][0], "t": "big"}]}, "edits[0].t"),
             ({"edits": [{**good["edits"][0], "directions": "missing.npy"}]}, "edits[0].directions"),
             ({"edits": [{**good["edits"][0], "k": 5}]}, "edits[0].k: 5 out of range"),
             ({"shard_size": 0}, "shard_size"), ({"colour": 1}, "colour"),
             ({"inputs": {"images": "no-such-folder"}}, "inputs.images: no such folder"),
             ({"inputs": {"images": "."}}, "inputs.images: "),  # the job's folder holds no images
             ({"inputs": {"images": "small"}}, "is 16x16, the generator makes 32x32"),
             ({"inputs": {"seeds": "0-3", "invert_steps": 2}}, "only with image-folder inputs"),
             ({"inputs": {"images": "small", "invert_loss": "lpips"}}, "inputs.loss_model"),
             ({"edits": [{"method": "mapper", "directions": "dirs.npy", "layers": [0, 1]}]}, "a mapper edit takes")]
    (job_file.parent / "small").mkdir(exist_ok=True)
    imio.save_png(np.zeros((16, 16, 3), np.uint8), job_file.parent / "small" / "x.png")
    for change, needle in cases:
        bad = job_file.parent / "bad.json"
        bad.write_text(json.dumps({**good, **change}))
        out = tmp_path / "o"
        assert main(["batch", str(bad), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    assert main(["batch", str(job_file), "--out", str(out), "--coordinator", "10.0.0.1"]) == 2  # no port
    err = capsys.readouterr().err.strip()
    assert "--coordinator '10.0.0.1': expected HOST:PORT" in err and not out.exists(), err


def test_an_eight_device_mesh_gives_the_same_files(whole, job_file, tmp_path):
    out = tmp_path / "mesh"
    flags = os.environ.get("XLA_FLAGS", "")  # conftest's optimization level too: the same rounding as `whole`
    env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-m", "jaxedit.cli.main", "batch", str(job_file), "--out", str(out)],
                       capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    mine, ref = _files(out), _files(whole)
    assert {k: v for k, v in mine.items() if k.startswith("images/")} == {
        k: v for k, v in ref.items() if k.startswith("images/")}  # byte-identical PNGs
    a, b = batch.load_items(out), batch.load_items(whole)
    np.testing.assert_array_equal(a["index"], b["index"])
    # one row per device instead of four: at the tests' -O0 XLA's CPU matmuls round differently per batch shape
    # (measured 7.2e-7); at the default optimization level the latents were identical (0.0, a standalone run)
    assert float(np.abs(a["latent"] - b["latent"]).max()) < 2e-6


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def test_bfloat16_images_are_close_to_float32_and_a_resume_in_another_dtype_is_refused(whole, job_file, tmp_path,
                                                                                      capsys):
    from PIL import Image

    out = tmp_path / "bf16"
    assert main(["batch", str(job_file), "--out", str(out), "--dtype", "bfloat16"]) == 0
    names = sorted(p.name for p in (whole / "images").iterdir())
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    load = lambda d: np.stack([np.asarray(Image.open(d / "images" / n)) for n in names])
    psnr = _psnr(load(out), load(whole))
    assert PSNR_BF16_MIN < psnr < float("inf")  # bf16 did run (not bitwise float32) and is close
    a, b = batch.load_items(out), batch.load_items(whole)
    np.testing.assert_allclose(a["latent"], b["latent"], atol=2e-6)  # mapping and edits stay float32
    assert json.loads((out / "job.json").read_text())["dtype"] == "bfloat16"
    capsys.readouterr()
    assert main(["batch", str(job_file), "--out", str(out)]) == 2  # the default float32 on a bf16 folder
    err = capsys.readouterr().err.strip()
    assert "--dtype bfloat16" in err and len(err.splitlines()) == 1, err


def test_the_engines_png_encoder_is_lossless():
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in (1, 2, 3, 4):
        img = rng.randint(0, 256, (3, 5, 7, c)).astype(np.uint8)
        for a, blob in zip(img, imio.encode_pngs(img)):
            back = np.asarray(Image.open(BytesIO(blob)))
            np.testing.assert_array_equal(back.reshape(a.shape), a)
