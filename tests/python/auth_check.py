"""Calls wechaty.Puppet/Version with grpcio the ways the official clients authenticate.

Usage: auth_check.py HOST:PORT TOKEN. Prints one line per check; exits non-zero on the first surprise.
"""
import sys

import grpc


def version(channel, metadata=None):
    call = channel.unary_unary(
        "/wechaty.Puppet/Version",
        request_serializer=lambda _: b"",
        response_deserializer=lambda raw: raw,
    )
    raw = call(None, metadata=metadata, timeout=10)
    # VersionResponse { string version = 1; }: tag 0x0a, a one-byte length for short strings.
    assert raw[:1] == b"\x0a" and raw[1] < 0x80, raw
    return raw[2 : 2 + raw[1]].decode()


def expect_unauthenticated(label, channel, metadata=None, message=None):
    try:
        version(channel, metadata)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (label, e.code(), e.details())
        if message is not None:
            assert e.details() == message, (label, e.details())
        print(f"{label} UNAUTHENTICATED {e.details()}")
        return
    raise AssertionError(f"{label}: call succeeded without a valid token")


def main():
    addr, token = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(addr) as ch:
        expect_unauthenticated("no-token", ch)
        expect_unauthenticated(
            "wrong-token", ch, [("authorization", "Wechaty nope")], 'Invalid Wechaty TOKEN "nope"'
        )
        print("header OK", version(ch, [("authorization", f"Wechaty {token}")]))
    # What the Python Wechaty client does: the token as :authority, no authorization header.
    with grpc.insecure_channel(addr, options=[("grpc.default_authority", token)]) as ch:
        print("authority OK", version(ch))


if __name__ == "__main__":
    main()
