#!/usr/bin/env python3
"""Probes which S3 write conditions an endpoint enforces, and the S3 features
s3mount relies on, in a throwaway bucket it creates and removes.

    eval "$(scripts/seaweedfs-local.sh start DIR)"   # or any endpoint
    python3 scripts/probe-conditions.py

Reads S3MOUNT_TEST_CONDITIONAL_ENDPOINT, S3MOUNT_TEST_CONDITIONAL_ACCESS_KEY_ID
and S3MOUNT_TEST_CONDITIONAL_SECRET_ACCESS_KEY (region: AWS_REGION, else
us-east-1); needs boto3. Prints one line per check:

    ok    NAME: what happened     the endpoint behaves as AWS S3 does
    FAIL  NAME: what happened     it does not (a condition not enforced, a
                                  request wrongly refused, a feature missing)
    info  NAME: what happened     a fact (ETag format, error codes), no verdict

and exits 1 when any check failed, 0 otherwise. Requests go out path-style,
one attempt each (no SDK retries), without the SDK's optional checksums.
"""

import concurrent.futures
import hashlib
import os
import sys
import threading
import time
import uuid

try:
    import boto3
    import botocore.config
    from botocore.exceptions import ClientError
except ImportError:
    sys.exit("probe-conditions: needs boto3 (python3 -m pip install boto3)")

MIB = 1024 * 1024
failures = []


def report(verdict, name, detail):
    print(f"{verdict:<5} {name}: {detail}", flush=True)
    if verdict == "FAIL":
        failures.append(name)


def outcome(fn, *args, **kwargs):
    """Runs one request: (HTTP status, error code or None, response or None)."""
    try:
        resp = fn(*args, **kwargs)
        return resp["ResponseMetadata"]["HTTPStatusCode"], None, resp
    except ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = e.response.get("Error", {}).get("Code")
        return status, code, None


def describe(status, code):
    return f"{status} {code}" if code else f"{status}"


def expect_refused(name, result, statuses=(412,), check_unchanged=None):
    """A request that must be refused with one of statuses (AWS: 412
    PreconditionFailed). check_unchanged() says whether the object is as it
    was before the request."""
    status, code, _ = result
    unchanged = check_unchanged() if check_unchanged else True
    detail = describe(status, code)
    if check_unchanged and not unchanged:
        detail += ", and the object WAS changed"
    if status in statuses and unchanged:
        report("ok", name, f"refused, {detail}")
    elif status is not None and 200 <= status < 300:
        report("FAIL", name, f"NOT ENFORCED: accepted, {detail}")
    else:
        report("FAIL", name, f"refused but not as AWS does (want {'/'.join(map(str, statuses))}): {detail}")


def expect_accepted(name, result, want=None):
    status, code, resp = result
    if status is not None and 200 <= status < 300:
        report("ok", name, f"accepted, {describe(status, code)}" + (f", {want(resp)}" if want else ""))
    else:
        report("FAIL", name, f"wrongly refused: {describe(status, code)}")


def main():
    env = os.environ
    try:
        endpoint = env["S3MOUNT_TEST_CONDITIONAL_ENDPOINT"]
        key_id = env["S3MOUNT_TEST_CONDITIONAL_ACCESS_KEY_ID"]
        secret = env["S3MOUNT_TEST_CONDITIONAL_SECRET_ACCESS_KEY"]
    except KeyError as e:
        sys.exit(f"probe-conditions: {e.args[0]} is not set")
    config = botocore.config.Config(
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": 1},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,
        connect_timeout=5,
        read_timeout=60,
    )
    region = env.get("AWS_REGION", "us-east-1")
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id,
                      aws_secret_access_key=secret, region_name=region, config=config)
    bad = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id,
                       aws_secret_access_key="wrong" + secret, region_name=region, config=config)
    print(f"probe-conditions: {endpoint}", flush=True)

    status, code, _ = outcome(bad.list_buckets)
    if status == 403:
        report("ok", "wrong secret key refused", describe(status, code))
    else:
        report("FAIL", "wrong secret key refused", f"got {describe(status, code)}")

    bucket = f"probe-conditions-{uuid.uuid4().hex[:12]}"
    status, code, _ = outcome(s3.create_bucket, Bucket=bucket)
    if not (status and 200 <= status < 300):
        report("FAIL", "CreateBucket", describe(status, code))
        return
    try:
        probe(s3, bucket)
    finally:
        cleanup(s3, bucket)


def body_of(s3, bucket, key):
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError:
        return None


def put(s3, bucket, key, body, **kw):
    return s3.put_object(Bucket=bucket, Key=key, Body=body, **kw)["ETag"]


def multipart(s3, bucket, key, parts, **complete_kw):
    """Uploads parts (a list of bytes) and completes: (status, code, resp)."""
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for n, part in enumerate(parts, 1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=n, Body=part)["ETag"]
        done.append({"PartNumber": n, "ETag": etag})
    result = outcome(s3.complete_multipart_upload, Bucket=bucket, Key=key, UploadId=up,
                     MultipartUpload={"Parts": done}, **complete_kw)
    if result[0] is None or not 200 <= result[0] < 300:
        outcome(s3.abort_multipart_upload, Bucket=bucket, Key=key, UploadId=up)
    return result


def probe(s3, bucket):
    b = bucket
    # --- ETag format -----------------------------------------------------
    body = b"version one"
    etag = put(s3, b, "obj", body)
    md5 = '"' + hashlib.md5(body).hexdigest() + '"'
    report("ok" if etag == md5 else "info", "PutObject ETag",
           f"{etag} ({'quoted MD5 of the body' if etag == md5 else 'NOT the quoted MD5 ' + md5})")
    unchanged = lambda: body_of(s3, b, "obj") == body  # noqa: E731

    # --- PutObject ---------------------------------------------------------
    expect_refused("PutObject If-None-Match:* on an existing key",
                   outcome(s3.put_object, Bucket=b, Key="obj", Body=b"other", IfNoneMatch="*"),
                   check_unchanged=unchanged)
    expect_accepted("PutObject If-None-Match:* on a missing key",
                    outcome(s3.put_object, Bucket=b, Key="fresh", Body=b"x", IfNoneMatch="*"))
    expect_refused("PutObject If-Match with a wrong ETag",
                   outcome(s3.put_object, Bucket=b, Key="obj", Body=b"other",
                           IfMatch='"00000000000000000000000000000000"'),
                   check_unchanged=unchanged)
    status, code, _ = outcome(s3.put_object, Bucket=b, Key="absent", Body=b"x", IfMatch=etag)
    if status == 404:
        report("ok", "PutObject If-Match on a missing key", f"refused, {describe(status, code)}")
    elif status and 200 <= status < 300:
        report("FAIL", "PutObject If-Match on a missing key", f"NOT ENFORCED: accepted, {describe(status, code)}")
    else:
        report("info", "PutObject If-Match on a missing key", f"refused, {describe(status, code)} (AWS: 404 NoSuchKey)")
    body2 = b"version two"
    result = outcome(s3.put_object, Bucket=b, Key="obj", Body=body2, IfMatch=etag)
    expect_accepted("PutObject If-Match with the right ETag", result, lambda r: f"new ETag {r['ETag']}")
    if result[2]:
        etag, body = result[2]["ETag"], body2
    status, code, _ = outcome(s3.put_object, Bucket=b, Key="obj", Body=b"other", IfNoneMatch=etag)
    report("info", "PutObject If-None-Match:<its ETag> (AWS supports only *)", describe(status, code))
    if status and 200 <= status < 300:
        etag = s3.head_object(Bucket=b, Key="obj")["ETag"]
        body = b"other"

    # --- GetObject / HeadObject ------------------------------------------
    wrong = '"ffffffffffffffffffffffffffffffff"'
    expect_refused("HeadObject If-Match with a wrong ETag", outcome(s3.head_object, Bucket=b, Key="obj", IfMatch=wrong))
    expect_accepted("HeadObject If-Match with the right ETag", outcome(s3.head_object, Bucket=b, Key="obj", IfMatch=etag))
    expect_refused("GetObject If-Match with a wrong ETag", outcome(s3.get_object, Bucket=b, Key="obj", IfMatch=wrong))
    expect_accepted("GetObject If-Match with the right ETag", outcome(s3.get_object, Bucket=b, Key="obj", IfMatch=etag))
    expect_refused("GetObject If-None-Match with its ETag (304)",
                   outcome(s3.get_object, Bucket=b, Key="obj", IfNoneMatch=etag), statuses=(304,))
    for op, fn in (("HeadObject", s3.head_object), ("GetObject", s3.get_object)):
        status, code, _ = outcome(fn, Bucket=b, Key="absent", IfMatch=etag)
        report("ok" if status == 404 else "info", f"{op} If-Match on a missing key",
               f"{describe(status, code)} (AWS: 404{' NoSuchKey' if op == 'GetObject' else ''})")

    # --- Ranged GET --------------------------------------------------------
    data = bytes(range(256)) * 64  # 16 KiB
    put(s3, b, "ranged", data)
    for rng, want in (("bytes=100-199", data[100:200]), ("bytes=16000-", data[16000:]),
                      ("bytes=-10", data[-10:]), ("bytes=16380-99999", data[16380:])):
        status, code, resp = outcome(s3.get_object, Bucket=b, Key="ranged", Range=rng)
        got = resp["Body"].read() if resp else None
        if status == 206 and got == want:
            report("ok", f"ranged GET {rng}", f"206, {len(got)} bytes, Content-Range {resp.get('ContentRange')}")
        else:
            report("FAIL", f"ranged GET {rng}", f"{describe(status, code)}, {None if got is None else len(got)} bytes"
                   f"{'' if got in (None, want) else ' (WRONG bytes)'}")
    status, code, _ = outcome(s3.get_object, Bucket=b, Key="ranged", Range="bytes=20000-20010")
    report("ok" if status == 416 else "FAIL", "ranged GET past the end", f"{describe(status, code)} (AWS: 416 InvalidRange)")

    # --- ListObjectsV2 -------------------------------------------------------
    keys = ["list/a/1", "list/a/2", "list/b/1", "list/c", "list/d", "list/e/x/y", "list/f"]
    for k in keys:
        put(s3, b, k, b"k")
    seen_keys, seen_prefixes, pages, token = [], [], 0, None
    while pages < 20:
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket=b, Prefix="list/", Delimiter="/", MaxKeys=2, **kw)
        pages += 1
        seen_keys += [o["Key"] for o in r.get("Contents", [])]
        seen_prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r.get("IsTruncated"):
            break
        token = r.get("NextContinuationToken")
        if not token:
            break
    want_keys, want_prefixes = ["list/c", "list/d", "list/f"], ["list/a/", "list/b/", "list/e/"]
    ok = sorted(seen_keys) == want_keys and sorted(seen_prefixes) == want_prefixes
    report("ok" if ok and pages >= 3 else "FAIL", "ListObjectsV2 delimiter + continuation (MaxKeys=2)",
           f"{pages} pages, keys {seen_keys}, prefixes {seen_prefixes}")
    seen, token, pages = [], None, 0
    while pages < 20:
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket=b, Prefix="list/", MaxKeys=3, **kw)
        pages += 1
        seen += [o["Key"] for o in r.get("Contents", [])]
        if not r.get("IsTruncated"):
            break
        token = r.get("NextContinuationToken")
    report("ok" if seen == sorted(keys) else "FAIL", "ListObjectsV2 no delimiter, continuation (MaxKeys=3)",
           f"{pages} pages, {len(seen)} keys in order: {seen == sorted(keys)}")
    r = s3.list_objects_v2(Bucket=b, Prefix="list/", StartAfter="list/c")
    got = [o["Key"] for o in r.get("Contents", [])]
    report("ok" if got == [k for k in sorted(keys) if k > "list/c"] else "FAIL", "ListObjectsV2 StartAfter", f"{got}")

    # --- Multipart -------------------------------------------------------------
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(123)]
    whole = b"".join(parts)
    status, code, resp = multipart(s3, b, "mp", parts)
    if resp:
        got = body_of(s3, b, "mp")
        mp_etag = resp["ETag"]
        digests = b"".join(hashlib.md5(p).digest() for p in parts)
        aws_etag = f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'
        report("ok" if got == whole else "FAIL", "multipart upload, 2 x 5 MiB + 123 B",
               f"{describe(status, code)}, read back {'equal' if got == whole else 'DIFFERENT'}")
        report("ok" if mp_etag == aws_etag else "info", "multipart ETag",
               f"{mp_etag} ({'MD5 of the part MD5s, -N, as AWS' if mp_etag == aws_etag else 'AWS would give ' + aws_etag})")
        head_etag = s3.head_object(Bucket=b, Key="mp")["ETag"]
        if head_etag != mp_etag:
            report("FAIL", "multipart ETag on HEAD", f"{head_etag}, not the {mp_etag} Complete returned")
        expect_accepted("HeadObject If-Match with a multipart ETag",
                        outcome(s3.head_object, Bucket=b, Key="mp", IfMatch=mp_etag))
    else:
        report("FAIL", "multipart upload, 2 x 5 MiB + 123 B", describe(status, code))
        mp_etag = None
    small = [os.urandom(1 * MIB)]
    status, code, _ = multipart(s3, b, "mp-small", [os.urandom(1 * MIB), os.urandom(10)])
    report("info", "multipart with a 1 MiB first part (AWS: 400 EntityTooSmall)", describe(status, code))

    mp_unchanged = lambda: body_of(s3, b, "mp") == whole  # noqa: E731
    expect_refused("CompleteMultipartUpload If-None-Match:* when the key exists",
                   multipart(s3, b, "mp", small, IfNoneMatch="*"), check_unchanged=mp_unchanged)
    expect_accepted("CompleteMultipartUpload If-None-Match:* on a missing key",
                    multipart(s3, b, "mp-fresh", small, IfNoneMatch="*"))
    expect_refused("CompleteMultipartUpload If-Match with a wrong ETag",
                   multipart(s3, b, "mp", small, IfMatch=wrong), check_unchanged=mp_unchanged)
    status, code, _ = multipart(s3, b, "mp-absent", small, IfMatch=wrong)
    report("ok" if status == 404 else ("FAIL" if status and status < 300 else "info"),
           "CompleteMultipartUpload If-Match on a missing key", f"{describe(status, code)} (AWS: 404 NoSuchKey)")
    if mp_etag:
        expect_accepted("CompleteMultipartUpload If-Match with the right (multipart) ETag",
                        multipart(s3, b, "mp", small, IfMatch=mp_etag), lambda r: f"new ETag {r['ETag']}")
    # The condition is checked at Complete, not at Create: a key written
    # after the upload began still makes Complete fail.
    up = s3.create_multipart_upload(Bucket=b, Key="mp-late")["UploadId"]
    p1 = s3.upload_part(Bucket=b, Key="mp-late", UploadId=up, PartNumber=1, Body=b"late")["ETag"]
    put(s3, b, "mp-late", b"written meanwhile")
    result = outcome(s3.complete_multipart_upload, Bucket=b, Key="mp-late", UploadId=up, IfNoneMatch="*",
                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1}]})
    expect_refused("CompleteMultipartUpload If-None-Match:*, key written after CreateMultipartUpload", result,
                   check_unchanged=lambda: body_of(s3, b, "mp-late") == b"written meanwhile")
    outcome(s3.abort_multipart_upload, Bucket=b, Key="mp-late", UploadId=up)

    # --- UploadPartCopy with a range ----------------------------------------
    src = os.urandom(6 * MIB + 1000)
    put(s3, b, "copy-src", src)
    up = s3.create_multipart_upload(Bucket=b, Key="upc")["UploadId"]
    r1 = outcome(s3.upload_part_copy, Bucket=b, Key="upc", UploadId=up, PartNumber=1,
                 CopySource={"Bucket": b, "Key": "copy-src"}, CopySourceRange=f"bytes=0-{5 * MIB - 1}")
    r2 = outcome(s3.upload_part_copy, Bucket=b, Key="upc", UploadId=up, PartNumber=2,
                 CopySource={"Bucket": b, "Key": "copy-src"}, CopySourceRange=f"bytes={5 * MIB}-{5 * MIB + 499}")
    if r1[2] and r2[2]:
        parts_done = [{"PartNumber": 1, "ETag": r1[2]["CopyPartResult"]["ETag"]},
                      {"PartNumber": 2, "ETag": r2[2]["CopyPartResult"]["ETag"]}]
        status, code, _ = outcome(s3.complete_multipart_upload, Bucket=b, Key="upc", UploadId=up,
                                  MultipartUpload={"Parts": parts_done})
        got = body_of(s3, b, "upc")
        want = src[:5 * MIB] + src[5 * MIB:5 * MIB + 500]
        report("ok" if got == want else "FAIL", "UploadPartCopy with x-amz-copy-source-range",
               f"complete {describe(status, code)}, read back {'equal' if got == want else 'DIFFERENT'}")
    else:
        report("FAIL", "UploadPartCopy with x-amz-copy-source-range",
               f"part 1 {describe(*r1[:2])}, part 2 {describe(*r2[:2])}")
        outcome(s3.abort_multipart_upload, Bucket=b, Key="upc", UploadId=up)
    up = s3.create_multipart_upload(Bucket=b, Key="upc2")["UploadId"]
    src_etag = s3.head_object(Bucket=b, Key="copy-src")["ETag"]
    expect_refused("UploadPartCopy x-amz-copy-source-if-match mismatch",
                   outcome(s3.upload_part_copy, Bucket=b, Key="upc2", UploadId=up, PartNumber=1,
                           CopySource={"Bucket": b, "Key": "copy-src"}, CopySourceIfMatch=wrong,
                           CopySourceRange="bytes=0-99"))
    expect_accepted("UploadPartCopy x-amz-copy-source-if-match match",
                    outcome(s3.upload_part_copy, Bucket=b, Key="upc2", UploadId=up, PartNumber=1,
                            CopySource={"Bucket": b, "Key": "copy-src"}, CopySourceIfMatch=src_etag,
                            CopySourceRange="bytes=0-99"))
    outcome(s3.abort_multipart_upload, Bucket=b, Key="upc2", UploadId=up)

    # --- CopyObject ---------------------------------------------------------
    obj_body = body_of(s3, b, "obj")
    obj_unchanged = lambda: body_of(s3, b, "obj") == obj_body  # noqa: E731
    expect_refused("CopyObject If-None-Match:* (destination exists)",
                   outcome(s3.copy_object, Bucket=b, Key="obj", CopySource={"Bucket": b, "Key": "copy-src"},
                           IfNoneMatch="*"), check_unchanged=obj_unchanged)
    expect_accepted("CopyObject If-None-Match:* (destination missing)",
                    outcome(s3.copy_object, Bucket=b, Key="copy-fresh", CopySource={"Bucket": b, "Key": "obj"},
                            IfNoneMatch="*"))
    expect_refused("CopyObject If-Match wrong destination ETag",
                   outcome(s3.copy_object, Bucket=b, Key="obj", CopySource={"Bucket": b, "Key": "copy-src"},
                           IfMatch=wrong), check_unchanged=obj_unchanged)
    expect_refused("CopyObject x-amz-copy-source-if-match mismatch",
                   outcome(s3.copy_object, Bucket=b, Key="copy-dst", CopySource={"Bucket": b, "Key": "obj"},
                           CopySourceIfMatch=wrong),
                   check_unchanged=lambda: body_of(s3, b, "copy-dst") is None)
    expect_accepted("CopyObject x-amz-copy-source-if-match match",
                    outcome(s3.copy_object, Bucket=b, Key="copy-dst", CopySource={"Bucket": b, "Key": "obj"},
                            CopySourceIfMatch=s3.head_object(Bucket=b, Key="obj")["ETag"]))
    r = s3.copy_object(Bucket=b, Key="copy-etag", CopySource={"Bucket": b, "Key": "obj"})
    got, head = r["CopyObjectResult"]["ETag"], s3.head_object(Bucket=b, Key="copy-etag")["ETag"]
    report("ok" if got == head else "info", "CopyObject result ETag",
           f"{got} (HEAD says {head}{'' if got == head else '; AWS quotes both alike'})")
    if mp_etag:
        r = s3.copy_object(Bucket=b, Key="copy-mp", CopySource={"Bucket": b, "Key": "mp"})
        head = s3.head_object(Bucket=b, Key="copy-mp")["ETag"]
        plain = '"' + hashlib.md5(body_of(s3, b, "mp")).hexdigest() + '"'
        report("ok" if head == plain else "info", "CopyObject of a multipart object, destination ETag",
               f"{head} (AWS: the plain MD5 {plain})")
    unquoted = s3.head_object(Bucket=b, Key="copy-etag")["ETag"].strip('"')
    expect_accepted("PutObject If-Match with the ETag unquoted",
                    outcome(s3.put_object, Bucket=b, Key="copy-etag", Body=b"y", IfMatch=unquoted))
    expect_refused("CopyObject x-amz-copy-source-if-none-match with the source ETag",
                   outcome(s3.copy_object, Bucket=b, Key="copy-dst2", CopySource={"Bucket": b, "Key": "obj"},
                           CopySourceIfNoneMatch=s3.head_object(Bucket=b, Key="obj")["ETag"]),
                   check_unchanged=lambda: body_of(s3, b, "copy-dst2") is None)

    # --- DeleteObject ---------------------------------------------------------
    put(s3, b, "del", b"delete me")
    del_etag = s3.head_object(Bucket=b, Key="del")["ETag"]
    expect_refused("DeleteObject If-Match with a wrong ETag",
                   outcome(s3.delete_object, Bucket=b, Key="del", IfMatch=wrong),
                   check_unchanged=lambda: body_of(s3, b, "del") == b"delete me")
    result = outcome(s3.delete_object, Bucket=b, Key="del", IfMatch=del_etag)
    gone = body_of(s3, b, "del") is None
    if result[0] and 200 <= result[0] < 300 and gone:
        report("ok", "DeleteObject If-Match with the right ETag", f"deleted, {describe(*result[:2])}")
    else:
        report("FAIL", "DeleteObject If-Match with the right ETag",
               f"{describe(*result[:2])}, object {'gone' if gone else 'STILL THERE'}")
    status, code, _ = outcome(s3.delete_object, Bucket=b, Key="del", IfMatch=del_etag)
    report("info", "DeleteObject If-Match on a missing key",
           f"{describe(status, code)} (AWS's DeleteObject reference: 204; its user guide names none)")

    # --- Races: exactly one of N concurrent conditional writes wins -----------
    race(s3, b)


def race(s3, b, writers=8, rounds=10):
    """Races conditional writes on one key: exactly one may win each round,
    and the object must be the winner's."""

    def contend(key, requests):
        barrier = threading.Barrier(len(requests))

        def one(req):
            barrier.wait()
            t = time.monotonic()
            r = outcome(*req)
            return r, time.monotonic() - t
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            results = list(pool.map(one, requests))
        won = [i for i, (r, _) in enumerate(results) if r[0] and 200 <= r[0] < 300]
        refused = {describe(*r[:2]) for r, _ in results if not (r[0] and 200 <= r[0] < 300)}
        return won, refused, max(dt for _, dt in results)

    def puts(key, n, **cond):
        return [(s3.put_object, {"Bucket": b, "Key": key, "Body": f"writer {i}".encode(), **cond}) for i in range(n)]

    def run(name, setup, requests, want_after):
        bad_rounds, refusals, slowest = [], set(), 0.0
        for n in range(rounds):
            key = f"race/{name}-{n}"
            etag = setup(key)
            reqs = requests(key, etag)
            won, refused, dt = contend(key, [(lambda kw, fn=fn: fn(**kw), kw) for fn, kw in reqs])
            refusals |= refused
            slowest = max(slowest, dt)
            final = body_of(s3, b, key)
            if len(won) != 1 or final != want_after(won[0]):
                bad_rounds.append(f"round {n}: {len(won)} won, object {final!r}")
        label = f"race: {name}, {len(reqs)} writers x {rounds} rounds"
        if bad_rounds:
            report("FAIL", label, f"NOT ATOMIC in {len(bad_rounds)} rounds: {'; '.join(bad_rounds[:3])}")
        else:
            report("ok", label, f"exactly one winner each round; losers got {', '.join(sorted(refusals))};"
                                f" slowest request {slowest:.1f}s")

    body = lambda i: f"writer {i}".encode()  # noqa: E731
    run("PutObject If-None-Match:*", lambda key: None,
        lambda key, _: puts(key, writers, IfNoneMatch="*"), body)
    run("PutObject If-Match", lambda key: put(s3, b, key, b"base"),
        lambda key, etag: puts(key, writers, IfMatch=etag), body)
    half = writers // 2
    run("PutObject If-Match vs DeleteObject If-Match", lambda key: put(s3, b, key, b"base"),
        lambda key, etag: puts(key, half, IfMatch=etag)
        + [(s3.delete_object, {"Bucket": b, "Key": key, "IfMatch": etag})] * half,
        lambda i: body(i) if i < half else None)


def cleanup(s3, bucket):
    try:
        for up in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            outcome(s3.abort_multipart_upload, Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                outcome(s3.delete_object, Bucket=bucket, Key=o["Key"])
        outcome(s3.delete_bucket, Bucket=bucket)
    except ClientError as e:
        print(f"probe-conditions: could not remove bucket {bucket}: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
    print(f"probe-conditions: {len(failures)} failed" + (f": {', '.join(failures)}" if failures else ""))
    sys.exit(1 if failures else 0)
