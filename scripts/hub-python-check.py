"""Drives the mock Hub with the real `huggingface_hub` client and checks what lands.

Run by scripts/hub-python-check.sh, which starts the mock and sets HF_ENDPOINT, HF_TOKEN,
HF_HOME and HF_HUB_DISABLE_XET=1 (the legacy LFS path: preupload, LFS batch, PUT/multipart,
verify, NDJSON commit). Two phases:

  python hub-python-check.py upload FIXTURES   # create_repo, upload_folder, create_commit(create_pr),
                                               # hf_hub_download of everything, byte comparisons
  python hub-python-check.py verify-push REPO LOCAL_DIR   # what loraweld pushed, read back by Python

Prints one line per check and ends with 'N passed, 0 failed'; exits 1 on any failure.
"""

import hashlib
import json
import os
import sys
import tempfile
import urllib.request

import huggingface_hub
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

ENDPOINT = os.environ["HF_ENDPOINT"]
api = HfApi(endpoint=ENDPOINT)
passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def stats():
    with urllib.request.urlopen(f"{ENDPOINT}/_mock/stats") as r:
        return json.load(r)


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def upload(fixtures):
    print(f"huggingface_hub {huggingface_hub.__version__} against {ENDPOINT}")
    user = api.whoami()["name"]
    check("whoami", user == "mock-user", user)

    # create_repo: private, then again with exist_ok (the Hub's 409 path).
    url = api.create_repo("mock-user/py-base", private=True)
    check("create_repo url", str(url) == f"{ENDPOINT}/mock-user/py-base", str(url))
    api.create_repo("mock-user/py-base", private=True, exist_ok=True)
    check("repo_info private", api.repo_info("mock-user/py-base").private is True)
    api.create_repo("mock-user/py-lora", exist_ok=True)

    # upload_folder: the 16-bit base (three shards; multipart above the mock's chunk size) and the adapter.
    before = stats()
    base = os.path.join(fixtures, "base_bf16")
    info = api.upload_folder(folder_path=base, repo_id="mock-user/py-base", commit_message="base")
    check("upload_folder commit url", info.commit_url.startswith(f"{ENDPOINT}/mock-user/py-base/commit/"), info.commit_url)
    lora = os.path.join(fixtures, "lora")
    api.upload_folder(folder_path=lora, repo_id="mock-user/py-lora", commit_message="adapter")
    after = stats()
    shards = [f for f in os.listdir(base) if f.endswith(".safetensors")] + ["adapter_model.safetensors"]
    check("lfs objects stored", after["objects_stored"] - before["objects_stored"] == len(shards), after)
    check("multipart used", after["part_puts"] > before["part_puts"] and after["completions"] > before["completions"], after)
    check("verify called", after["verifies"] - before["verifies"] == len(shards), after)
    check("no token sent to presigned URLs", after["puts_with_authorization"] == 0, after)

    files = sorted(api.list_repo_files("mock-user/py-base"))
    check("list_repo_files", files == sorted(os.listdir(base) + [".gitattributes"]), files)

    # hf_hub_download of every file: bytes equal, blobs named like the real cache (sha256 for LFS).
    for f in os.listdir(base):
        p = hf_hub_download("mock-user/py-base", f)
        check(f"hf_hub_download {f}", same_bytes(p, os.path.join(base, f)))
        if f.endswith(".safetensors"):
            check(f"cache blob of {f} is its sha256", os.path.basename(os.path.realpath(p)) == sha256(p))

    # A re-upload of the same folder sends nothing through LFS (the server already has the objects).
    s0 = stats()
    api.upload_folder(folder_path=base, repo_id="mock-user/py-base", commit_message="again")
    s1 = stats()
    check("re-upload sends no object", s1["puts"] == s0["puts"], (s0, s1))

    # create_commit with create_pr: a PR ref the client can download from.
    extra = b'{"note": "from a pull request"}\n'
    pr = api.create_commit(
        repo_id="mock-user/py-base",
        operations=[CommitOperationAdd(path_in_repo="notes/pr.json", path_or_fileobj=extra)],
        commit_message="a pr",
        create_pr=True,
    )
    check("create_pr url", pr.pr_url == f"{ENDPOINT}/mock-user/py-base/discussions/1", pr.pr_url)
    check("create_pr revision", pr.pr_revision == "refs/pr/1", pr.pr_revision)
    p = hf_hub_download("mock-user/py-base", "notes/pr.json", revision="refs/pr/1")
    check("hf_hub_download from the pr", open(p, "rb").read() == extra)
    try:
        hf_hub_download("mock-user/py-base", "notes/pr.json")
        check("pr file not on main", False)
    except huggingface_hub.errors.EntryNotFoundError:
        check("pr file not on main", True)
    try:
        hf_hub_download("mock-user/nope", "config.json")
        check("missing repo is RepositoryNotFoundError", False)
    except huggingface_hub.errors.RepositoryNotFoundError:
        check("missing repo is RepositoryNotFoundError", True)


def verify_push(repo, local):
    """What loraweld pushed: every file of LOCAL (but the manifest) is in the repo, byte for byte."""
    files = set(api.list_repo_files(repo))
    for f in sorted(os.listdir(local)):
        if f == "loraweld-manifest.json":
            check("manifest is not pushed", f not in files)
            continue
        p = hf_hub_download(repo, f)
        check(f"loraweld push -> hf_hub_download {f}", same_bytes(p, os.path.join(local, f)))
    card = huggingface_hub.ModelCard.load(repo)
    tags = card.data.tags or []
    check("card tags include --tags", "ci-tag" in tags and "loraweld" in tags, tags)
    check("card library_name", card.data.library_name == "transformers", card.data.library_name)
    check("card pipeline_tag", card.data.pipeline_tag == "text-generation", card.data.pipeline_tag)
    info = api.model_info(repo)
    check("model_info sha", len(info.sha) == 40, info.sha)


if __name__ == "__main__":
    if sys.argv[1] == "upload":
        upload(sys.argv[2])
    elif sys.argv[1] == "verify-push":
        verify_push(sys.argv[2], sys.argv[3])
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
