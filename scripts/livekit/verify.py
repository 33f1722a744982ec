"""Checks a carehub video join token with PyPI livekit-api's TokenVerifier (the library a
LiveKit deployment's own services verify tokens with), pinned by scripts/livekit/install.sh.

Usage: verify.py --api-key KEY --room ROOM --identity USER_ID --expires UNIX_SECONDS
                 [--max-ttl SECONDS]
The token is read from stdin and the API secret from $LIVEKIT_API_SECRET (neither on the command
line, where process listings would show them). Prints one JSON object: {"ok": bool,
"problems": [...], "claims": {...}}; exits 0 when every check passes, 1 otherwise.

Checks:
- TokenVerifier(api key, secret) accepts it: HS256 signature, issuer = the API key, exp present
  and not passed; identity, room and the video grant (roomJoin, canPublish, canSubscribe,
  canPublishData) are what was asked for, each grant written out in the token, no `name`;
- the header is {"alg": "HS256", "typ": "JWT"}; nbf <= now; exp = --expires; exp - nbf is at most
  --max-ttl; a jti is present;
- the library can refuse it: another secret, another API key, and the verifier's clock set to
  the expiry (or just before nbf) are each refused, while one second before the expiry is not.
"""

import argparse
import datetime
import json
import os
import sys

import jwt
import jwt.api_jwt
from livekit.api import TokenVerifier

GRANTS = ("roomJoin", "canPublish", "canSubscribe", "canPublishData")
NO_LEEWAY = datetime.timedelta(0)


class _Clock:
    """Sets the clock PyJWT (under TokenVerifier) validates nbf/exp with, for one block."""

    def __init__(self, at):
        self.at = at
        self.saved = None

    def __enter__(self):
        at = self.at
        real = datetime.datetime

        class Frozen(real):
            @classmethod
            def now(cls, tz=None):
                return real.fromtimestamp(at, tz=tz)

        self.saved = jwt.api_jwt.datetime
        jwt.api_jwt.datetime = Frozen

    def __exit__(self, *exc):
        jwt.api_jwt.datetime = self.saved


def refused(verifier, token, at=None):
    try:
        if at is None:
            verifier.verify(token)
        else:
            with _Clock(at):
                verifier.verify(token)
    except jwt.InvalidTokenError as e:
        return type(e).__name__
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api-key", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--expires", type=int, required=True)
    p.add_argument("--max-ttl", type=int, default=3600)
    a = p.parse_args()
    secret = os.environ["LIVEKIT_API_SECRET"]
    token = sys.stdin.read().strip()
    problems = []

    def need(ok, what):
        if not ok:
            problems.append(what)

    try:
        claims = TokenVerifier(a.api_key, secret).verify(token)
    except Exception as e:  # noqa: BLE001 - any refusal is the finding
        print(json.dumps({"ok": False, "problems": [f"TokenVerifier refused it: {e!r}"]}))
        return 1
    video = claims.video
    need(claims.identity == a.identity, f"identity {claims.identity!r} != {a.identity!r}")
    need(video.room == a.room, f"room {video.room!r} != {a.room!r}")
    need(video.room_join is True, "roomJoin is not true")
    need(video.can_publish is True, "canPublish is not true")
    need(video.can_subscribe is True, "canSubscribe is not true")
    need(video.can_publish_data is True, "canPublishData is not true")
    need(claims.name == "", "the token carries a name")

    header = jwt.get_unverified_header(token)
    need(header == {"alg": "HS256", "typ": "JWT"}, f"header {header}")
    raw = jwt.decode(token, secret, algorithms=["HS256"], issuer=a.api_key)
    need(all(raw.get("video", {}).get(g) is True for g in GRANTS),
         f"grants not written out: {raw.get('video')}")
    need("name" not in raw, "a name claim is present")
    need(bool(raw.get("jti")), "no jti")
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    nbf, exp = raw.get("nbf"), raw.get("exp")
    need(isinstance(nbf, int) and nbf <= now + 5, f"nbf {nbf} is not at most now ({now:.0f})")
    need(exp == a.expires, f"exp {exp} != {a.expires}")
    if isinstance(nbf, int) and isinstance(exp, int):
        need(0 < exp - nbf <= a.max_ttl, f"lifetime {exp - nbf}s is not within 1..={a.max_ttl}")

    strict = TokenVerifier(a.api_key, secret, leeway=NO_LEEWAY)
    need(refused(TokenVerifier(a.api_key, secret + "x"), token) is not None,
         "accepted under another secret")
    need(refused(TokenVerifier(a.api_key + "x", secret), token) is not None,
         "accepted for another API key")
    if isinstance(nbf, int) and isinstance(exp, int):
        need(refused(strict, token, at=exp - 1) is None, "refused one second before its expiry")
        why = refused(strict, token, at=exp)
        need(why == "ExpiredSignatureError", f"not refused as expired at exp (got {why})")
        why = refused(strict, token, at=nbf - 1)
        need(why == "ImmatureSignatureError", f"not refused before nbf (got {why})")

    out = {
        "ok": not problems,
        "problems": problems,
        "claims": {
            "identity": claims.identity,
            "room": video.room,
            "nbf": nbf,
            "exp": exp,
            "grants": {g: raw.get("video", {}).get(g) for g in GRANTS},
        },
    }
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
