"""The server with its object store on a real S3-compatible endpoint (moto's server) instead of
the local directory: what boto3 uploads through Salvia lands in that store."""

from __future__ import annotations

import os
from pathlib import Path

import boto3

from tests.conftest import SalviaServer


def test_server_stores_objects_in_the_configured_s3_endpoint(
    moto_endpoint: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = SalviaServer(
        home,
        env={
            "SALVIA_S3_ENDPOINT_URL": moto_endpoint,
            "SALVIA_S3_ACCESS_KEY_ID": "testing",
            "SALVIA_S3_SECRET_ACCESS_KEY": "testing",
        },
    ).start()
    try:
        s3 = server.client("s3")
        s3.create_bucket(Bucket="remote-data")
        data = os.urandom(9 * 1024 * 1024 + 17)  # above boto3's multipart threshold
        (tmp_path / "big.bin").write_bytes(data)
        s3.upload_file(str(tmp_path / "big.bin"), "remote-data", "sets/big.bin")
        s3.put_object(Bucket="remote-data", Key="sets/small.txt", Body=b"hello")

        direct = boto3.client(
            "s3",
            endpoint_url=moto_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        assert direct.get_object(Bucket="remote-data", Key="sets/big.bin")["Body"].read() == data
        listed = s3.list_objects_v2(Bucket="remote-data", Prefix="sets/")["Contents"]
        assert [o["Key"] for o in listed] == ["sets/big.bin", "sets/small.txt"]
        assert not (home / "objects" / "remote-data").exists()
    finally:
        server.stop()
