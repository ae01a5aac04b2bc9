"""The command line's security: ``hodei token …``, ``hodei pki init``, and the options by which the other commands
take tokens and TLS files. It only parses and calls :mod:`hodei.security`."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from hodei.cli._common import errors, parse_label

if TYPE_CHECKING:
    from hodei.transport._client import SchedulerPortClient

__all__ = [
    "WORKER_CREDENTIAL_TTL",
    "AuthKeyOption",
    "MetricsTlsCertOption",
    "MetricsTlsClientCaOption",
    "MetricsTlsKeyOption",
    "ServeTlsCertOption",
    "ServeTlsClientCaOption",
    "ServeTlsKeyOption",
    "TlsCaOption",
    "TlsCertOption",
    "TlsKeyOption",
    "TokenFileOption",
    "TokenOption",
    "WorkerCredentialTtlOption",
    "client_tls",
    "minting_authority",
    "pki_app",
    "read_token",
    "scheduler_client",
    "serve_security",
    "tls_ca_option",
    "tls_cert_option",
    "tls_key_option",
    "token_app",
    "token_file_option",
]

token_app = typer.Typer(help="Make the keys and tokens of a scheduler with auth on.", no_args_is_help=True)
pki_app = typer.Typer(help="Throw-away certificates for local use and tests.", no_args_is_help=True)
out = Console(width=10_000, highlight=False, soft_wrap=True)


def _path_option(name: str, envvar: str | None, help_text: str) -> Any:
    return typer.Option(name, envvar=envvar, help=help_text, show_default=False)


def tls_ca_option(envvar: str | None = "HODEI_TLS_CA") -> Any:
    return _path_option(
        "--tls-ca", envvar, "Speak TLS, trusting this CA (PEM) for the scheduler's certificate."
    )


def tls_cert_option(envvar: str | None = "HODEI_TLS_CERT") -> Any:
    return _path_option(
        "--tls-cert", envvar, "Client certificate (PEM) for a scheduler that asks for one (mTLS)."
    )


def tls_key_option(envvar: str | None = "HODEI_TLS_KEY") -> Any:
    return _path_option("--tls-key", envvar, "The private key (PEM) of --tls-cert.")


def token_file_option(envvar: str | None = "HODEI_TOKEN_FILE") -> Any:
    return _path_option(
        "--token-file", envvar, "Read the token from this file (safer than the command line)."
    )


# --- hodei scheduler serve --------------------------------------------------------------------------------------

AuthKeyOption = Annotated[
    str,
    typer.Option(
        envvar="HODEI_AUTH_KEY",
        help="Require tokens signed with this key: a secret file (hodei token secret) or an Ed25519 private key "
        "(PEM). Default: no auth (anyone who reaches the port may do anything).",
        show_default=False,
    ),
]
WORKER_CREDENTIAL_TTL = 7 * 24 * 3600.0  # hodei.security.DEFAULT_WORKER_CREDENTIAL_TTL, without importing it
OPERATOR_TOKEN_TTL = 30 * 24 * 3600.0  # hodei.security.DEFAULT_OPERATOR_TOKEN_TTL
WorkerCredentialTtlOption = Annotated[
    float,
    typer.Option(
        help="Seconds a worker credential is valid, renewed at each hello (default: a week; 0: no expiry).",
        min=0,
    ),
]
ServeTlsCertOption = Annotated[
    str, typer.Option("--tls-cert", help="Serve gRPC over TLS with this certificate.")
]
ServeTlsKeyOption = Annotated[str, typer.Option("--tls-key", help="The private key (PEM) of --tls-cert.")]
ServeTlsClientCaOption = Annotated[
    str, typer.Option("--tls-client-ca", help="Require client certificates signed by this CA (mutual TLS).")
]
MetricsTlsCertOption = Annotated[
    str, typer.Option("--metrics-tls-cert", help="Serve /metrics over HTTPS with this certificate.")
]
MetricsTlsKeyOption = Annotated[str, typer.Option("--metrics-tls-key", help="The key of --metrics-tls-cert.")]
MetricsTlsClientCaOption = Annotated[
    str,
    typer.Option(
        "--metrics-tls-client-ca", help="Require client certificates signed by this CA on /metrics."
    ),
]


def serve_security(
    auth_key: str,
    worker_credential_ttl: float,
    grpc_tls: tuple[str, str, str],
    metrics_tls: tuple[str, str, str],
) -> tuple[Any, Any]:
    """The scheduler's :class:`~hodei.security.SchedulerSecurity` and its ``/metrics`` TLS (or None) from the
    options of ``hodei scheduler serve``; a file that is wrong makes it say which and exit 2."""
    from hodei.security import SchedulerSecurity, TlsConfig

    cert, key, client_ca = grpc_tls
    try:
        security = SchedulerSecurity.from_files(
            auth_key=auth_key or None,
            tls_cert=cert or None,
            tls_key=key or None,
            tls_client_ca=client_ca or None,
            worker_credential_ttl=worker_credential_ttl or None,
        )
        http = None
        if any(metrics_tls):
            m_cert, m_key, m_client_ca = metrics_tls
            if not (m_cert and m_key):
                raise ValueError("HTTPS on /metrics needs --metrics-tls-cert and --metrics-tls-key")
            http = TlsConfig(Path(m_cert), Path(m_key), Path(m_client_ca) if m_client_ca else None)
            http.check()
    except (OSError, ValueError) as error:
        errors.print(f"hodei scheduler: {error}", markup=False, highlight=False)
        raise typer.Exit(2) from error
    return security, http


# --- the clients' options --------------------------------------------------------------------------------------


TokenFileOption = Annotated[str, token_file_option()]
TlsCaOption = Annotated[str, tls_ca_option()]
TlsCertOption = Annotated[str, tls_cert_option()]
TlsKeyOption = Annotated[str, tls_key_option()]


def client_tls(ca: str, cert: str, key: str) -> Any:
    """The :class:`~hodei.security.ClientTlsConfig` of ``--tls-ca``/``--tls-cert``/``--tls-key`` (None when
    none is given); a bad file is a bad parameter, before anything is dialled."""
    from hodei.security import ClientTlsConfig

    if not (ca or cert or key):
        return None
    config = ClientTlsConfig(*(Path(p) if p else None for p in (ca, cert, key)))
    problems = config.violations()
    if problems:
        raise typer.BadParameter(
            "; ".join(str(p) for p in problems), param_hint="--tls-ca/--tls-cert/--tls-key"
        )
    return config


def read_token(token: str, token_file: str, *, option: str = "--token") -> str | None:
    """The token given on the command line or in a file (not both); None when neither."""
    if token and token_file:
        raise typer.BadParameter(f"give {option} or --token-file, not both", param_hint=option)
    if not token_file:
        return token.strip() or None
    try:
        text = Path(token_file).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise typer.BadParameter(f"cannot read {token_file}: {error}", param_hint="--token-file") from error
    if not text:
        raise typer.BadParameter(f"{token_file} is empty", param_hint="--token-file")
    return text


# A workers command's credential and TLS (HODEI_TOKEN, HODEI_TOKEN_FILE, HODEI_TLS_* in the environment).
TokenOption = Annotated[
    str,
    typer.Option(
        "--token", envvar="HODEI_TOKEN", help="Operator token (hodei token operator).", show_default=False
    ),
]


def scheduler_client(
    scheduler: str, token: str, token_file: str, tls_ca: str, tls_cert: str, tls_key: str
) -> Callable[[], SchedulerPortClient]:
    """What makes the client of a workers command (in its event loop), with its token (or token file) and its
    TLS files; a bad file is a bad parameter now, before anything is dialled."""
    from hodei.transport._client import SchedulerPortClient

    tls = client_tls(tls_ca, tls_cert, tls_key)
    credential = read_token(token, token_file)
    return lambda: SchedulerPortClient(scheduler, credential=credential, tls=tls)


# --- hodei token ---------------------------------------------------------------------------------------------

KeyOption = Annotated[
    Path,
    typer.Option(
        "--key",
        envvar="HODEI_AUTH_KEY",
        help="The scheduler's token key: a secret file (hodei token secret) or an Ed25519 private key (PEM).",
    ),
]
TtlOption = Annotated[float, typer.Option(help="Seconds the token is valid (0: no expiry).", min=0)]


def minting_authority(key: Path, option: str = "--key") -> Any:
    """A token authority that can make tokens with the key in ``key``, or a bad-parameter error naming
    ``option``."""
    from hodei.security import TokenAuthority, load_key

    try:
        authority = TokenAuthority(load_key(key))
    except (OSError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint=option) from error
    if not authority.can_mint:
        raise typer.BadParameter(
            f"{key} is a public key: it verifies tokens but cannot make them", param_hint=option
        )
    return authority


def _say_expiry(what: str, expires_at: datetime | None, ttl: float) -> None:
    """On stderr (stdout holds the token alone): when the token just minted expires."""
    if expires_at is None:
        errors.print(f"the {what} never expires", markup=False, highlight=False)
        return
    errors.print(
        f"the {what} expires at {expires_at.isoformat().replace('+00:00', 'Z')} (in {_duration(ttl)})",
        markup=False,
        highlight=False,
    )


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size, 1)
            return f"{count:g} {unit}" + ("" if count == 1 else "s")
    return f"{seconds:g} s"


def _mint(make: Any) -> str:
    try:
        token: str = make()
    except ValueError as error:  # an invalid name or worker id
        raise typer.BadParameter(str(error)) from error
    out.print(token, markup=False)
    return token


@token_app.command("secret")
def token_secret(
    path: Annotated[Path, typer.Argument(help="Where to write the new secret (mode 0600).")],
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write a fresh HMAC secret: the token key of a scheduler (--auth-key) and of whoever makes its tokens."""
    from hodei.security import generate_secret

    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as error:
        raise typer.BadParameter(f"{path} exists (--force replaces it)") from error
    except OSError as error:
        raise typer.BadParameter(f"cannot write {path}: {error.strerror}") from error
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(generate_secret() + b"\n")
    errors.print(f"wrote a new token secret to {path}", highlight=False)


@token_app.command("operator")
def token_operator(
    name: Annotated[str, typer.Argument(help="Who the token is for (shown in the scheduler's logs).")],
    key: KeyOption,
    ttl: Annotated[
        float, typer.Option(help="Seconds the token is valid (default: 30 days; 0: no expiry).", min=0)
    ] = OPERATOR_TOKEN_TTL,
) -> None:
    """Print an operator token: every call allowed (the CLI's workers commands, a control plane).

    The token goes to stdout; when it expires, to stderr."""
    authority = minting_authority(key)
    token = _mint(lambda: authority.mint_operator_token(name, ttl or None))
    _say_expiry("operator token", authority.verify_operator_token(token).expires_at, ttl)


@token_app.command("join")
def token_join(
    worker_id: Annotated[str, typer.Argument(help="The worker the token lets register, once.")],
    key: KeyOption,
    ttl: Annotated[float, typer.Option(help="Seconds the token is valid.", min=1)] = 600.0,
    pool: Annotated[str, typer.Option(help="Bind the token to this pool.")] = "",
    label: Annotated[
        list[str] | None, typer.Option(help="Bind the token to exactly these labels, k=v (repeatable).")
    ] = None,
    reusable: Annotated[bool, typer.Option(help="Usable more than once until it expires.")] = False,
) -> None:
    """Print a join token for one worker: its agent registers with it (hodei agent --token-file)."""

    authority = minting_authority(key)
    labels = dict(parse_label(item) for item in label) if label else None
    _mint(
        lambda: authority.mint_join_token(
            worker_id, ttl=ttl, pool=pool or None, labels=labels, single_use=not reusable
        )
    )


@token_app.command("worker")
def token_worker(
    worker_id: Annotated[str, typer.Argument(help="The worker the credential is for.")],
    key: KeyOption,
    ttl: TtlOption = 0.0,
    pool: Annotated[str, typer.Option(help="Bind the credential to this pool.")] = "",
    label: Annotated[
        list[str] | None, typer.Option(help="Bind the credential to exactly these labels, k=v (repeatable).")
    ] = None,
) -> None:
    """Print a worker credential: a static worker's own, long-lived token (it survives restarts of its agent)."""
    authority = minting_authority(key)
    labels = dict(parse_label(item) for item in label) if label else None
    _mint(
        lambda: authority.mint_worker_credential(worker_id, ttl=ttl or None, pool=pool or None, labels=labels)
    )


# --- hodei pki -----------------------------------------------------------------------------------------------


@pki_app.command("init")
def pki_init(
    directory: Annotated[Path, typer.Argument(help="Where to write the files (made if missing).")],
    force: Annotated[bool, typer.Option(help="Replace the files of an existing one.")] = False,
) -> None:
    """Write a throw-away CA, a server certificate (localhost, 127.0.0.1, ::1) and a client certificate.

    For local use and tests only: the CA's key is not kept, so nothing else can ever be signed by it. Files
    already there are kept (exit 2) unless --force: certificates signed by their CA would stop working.
    """
    from hodei.security import write_test_pki

    names = ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
    existing = [directory / name for name in names if (directory / name).exists()]
    if existing and not force:
        raise typer.BadParameter(f"{existing[0]} exists (--force replaces it)", param_hint="DIRECTORY")
    pki = write_test_pki(directory)
    for label, path in (
        ("CA", pki.ca_file),
        ("server certificate", pki.server_cert_file),
        ("server key", pki.server_key_file),
        ("client certificate", pki.client_cert_file),
        ("client key", pki.client_key_file),
    ):
        out.print(f"{label + ':':20} {path}", markup=False)
