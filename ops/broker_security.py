"""The local broker with a SASL_SSL client listener only: certificates, users and its settings.

``twinstream broker start --sasl-ssl`` (or ``TWINSTREAM_BROKER_SASL_SSL=1``) starts the single
broker of :mod:`ops.broker` with one client listener, ``SASL_SSL``, on its port; the controller
listener stays ``PLAINTEXT`` on 127.0.0.1, and the broker talks to itself on the ``SASL_SSL``
listener as user ``admin``. A client without TLS and a SASL user is refused.

On the first start, :func:`prepare` writes under ``RUN_DIR/secrets``: a CA and the broker's key
and certificate (for ``localhost`` and ``127.0.0.1``), made with the JDK's ``keytool``, as PKCS12
key and trust stores; the CA as PEM for clients (``ca.pem``); random passwords. The users
``twin`` (for clients) and ``admin`` log in with ``SCRAM-SHA-512`` (added to the metadata log when
the storage is formatted) or ``PLAIN`` (the listener's JAAS configuration). ``RUN_DIR/client.env``
holds the ``TWINSTREAM_*`` settings a client needs (:mod:`contracts.security`)::

    set -a; . /tmp/twinstream-kafka/client.env; set +a

>>> plain = "node.id=1\\nlisteners=PLAINTEXT://127.0.0.1:9092\\nlog.dirs=/k/data\\n"
>>> made = Secrets("k", "twin-pw", "admin-pw")
>>> text = replace_listeners(plain, listener_properties(Path("/k/secrets"), made, 9092, 9093))
>>> print(*text.splitlines()[:3], sep="\\n")
node.id=1
listeners=SASL_SSL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=SASL_SSL://127.0.0.1:9092
>>> scram_users(Secrets("k", "twin-pw", "admin-pw"))[1]
'SCRAM-SHA-512=[name=twin,password=twin-pw]'
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from contracts.security import KafkaSecurity
from ops.kafka_jars import BrokerError

CLIENT_USER, ADMIN_USER = "twin", "admin"
MECHANISM = "SCRAM-SHA-512"  # what clients are told to use; PLAIN is offered too
SAN = "SAN=dns:localhost,ip:127.0.0.1"  # the broker's names, for clients that check them
CA_NAME = "CN=twinstream local CA"
CA_EXTENSIONS = ("-ext", "bc:c", "-ext", "KeyUsage:c=keyCertSign,cRLSign")
VALID_DAYS = "3650"

# replaces the listener lines of the single broker's server.properties
PLAINTEXT_LISTENER_KEYS = (
    "listeners",
    "advertised.listeners",
    "controller.listener.names",
    "inter.broker.listener.name",
    "listener.security.protocol.map",
)
LISTENERS = """listeners=SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=SASL_SSL://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="{admin}" password="{admin_password}";
listener.name.sasl_ssl.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
username="{admin}" password="{admin_password}" \
user_{admin}="{admin_password}" user_{user}="{user_password}";
ssl.keystore.type=PKCS12
ssl.keystore.location={folder}/broker.p12
ssl.keystore.password={store_password}
ssl.key.password={store_password}
ssl.truststore.type=PKCS12
ssl.truststore.location={folder}/truststore.p12
ssl.truststore.password={store_password}
ssl.client.auth=none
"""


@dataclass(frozen=True)
class Secrets:
    """The passwords of one secured broker (made once, kept in ``secrets/passwords.json``)."""

    store: str  # the key and trust stores'
    user: str  # CLIENT_USER's
    admin: str  # ADMIN_USER's

    @classmethod
    def load_or_make(cls, folder: Path) -> Secrets:
        path = folder / "passwords.json"
        if path.exists():
            return cls(**json.loads(path.read_text()))
        made = cls(*(secrets.token_hex(16) for _ in range(3)))  # no character needs quoting
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(json.dumps(asdict(made)))
        path.chmod(0o600)
        return made


def secrets_folder(run_dir: Path) -> Path:
    return run_dir / "secrets"


def client_env_file(run_dir: Path) -> Path:
    return run_dir / "client.env"


def listener_properties(
    folder: Path, made: Secrets, port: int, controller_port: int, host: str = "127.0.0.1"
) -> str:
    """The listener, SASL and TLS lines of the secured broker (keys and passwords in ``folder``)."""
    return LISTENERS.format(
        host=host,
        port=port,
        controller_port=controller_port,
        admin=ADMIN_USER,
        admin_password=made.admin,
        user=CLIENT_USER,
        user_password=made.user,
        folder=folder,
        store_password=made.store,
    )


def secured(properties: str, run_dir: Path, port: int, controller_port: int) -> str:
    """The broker's ``server.properties`` with a SASL_SSL client listener instead of its own."""
    folder = secrets_folder(run_dir)
    listeners = listener_properties(folder, Secrets.load_or_make(folder), port, controller_port)
    return replace_listeners(properties, listeners)


def replace_listeners(properties: str, listeners: str) -> str:
    """``server.properties`` with its listener lines replaced by ``listeners``, in their place."""
    lines = properties.splitlines(keepends=True)
    keys = [line.split("=", 1)[0] for line in lines]
    first = keys.index(PLAINTEXT_LISTENER_KEYS[0])
    kept = [
        line for line, key in zip(lines, keys, strict=True) if key not in PLAINTEXT_LISTENER_KEYS
    ]
    return "".join(kept[:first]) + listeners + "".join(kept[first:])


def scram_users(made: Secrets) -> list[str]:
    """The SCRAM credentials of both users, as ``kafka-storage format --add-scram`` takes them."""
    users = ((ADMIN_USER, made.admin), (CLIENT_USER, made.user))
    return [f"{MECHANISM}=[name={name},password={password}]" for name, password in users]


def format_args(run_dir: Path) -> list[str]:
    """What ``kafka-storage format`` adds for the secured broker: its users."""
    made = Secrets.load_or_make(secrets_folder(run_dir))
    return [arg for user in scram_users(made) for arg in ("--add-scram", user)]


def client_security(run_dir: Path) -> KafkaSecurity:
    """How a client logs in to the secured broker in ``run_dir`` (user ``twin``)."""
    made = Secrets.load_or_make(secrets_folder(run_dir))
    ca = secrets_folder(run_dir) / "ca.pem"
    return KafkaSecurity("SASL_SSL", MECHANISM, CLIENT_USER, made.user, ca_file=str(ca))


def prepare(run_dir: Path, data: Path) -> Secrets:
    """Passwords, certificates and ``client.env``, each made once; returns the passwords.

    Refuses storage formatted without its users (``data``, by a broker started without
    ``--sasl-ssl`` in the same folder)."""
    folder = secrets_folder(run_dir)
    if not (folder / "passwords.json").exists() and (data / "meta.properties").exists():
        raise BrokerError(
            f"{run_dir} holds a broker formatted without SASL users: stop it and start the "
            "--sasl-ssl broker in another TWINSTREAM_BROKER_DIR (or remove that folder)"
        )
    made = Secrets.load_or_make(folder)
    if not (folder / "truststore.p12").exists():
        make_certificates(folder, made.store)
    env = client_security(run_dir).environment()
    path = client_env_file(run_dir)
    path.write_text("".join(f"{name}={value}\n" for name, value in sorted(env.items())))
    path.chmod(0o600)
    return made


def make_certificates(folder: Path, password: str) -> None:
    """A CA, the broker's key and certificate signed by it, and a trust store, with keytool."""
    keytool = shutil.which("keytool")
    if keytool is None:
        raise BrokerError("keytool (part of a JDK) is needed for --sasl-ssl: install a JDK 17+")

    def tool(*args: str | Path) -> None:
        cmd = [keytool, *map(str, args), "-storetype", "PKCS12", "-storepass", password]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerError(f"keytool {args[0]} failed:\n{done.stdout}{done.stderr}")

    ca, broker, trust = (folder / n for n in ("ca.p12", "broker.p12", "truststore.p12"))
    for left in (ca, broker, trust):  # of a start that failed half-way
        left.unlink(missing_ok=True)
    ca_pem, csr, signed = folder / "ca.pem", folder / "broker.csr", folder / "broker.pem"
    new_key = ("-genkeypair", "-keyalg", "RSA", "-keysize", "2048", "-validity", VALID_DAYS)
    tool(*new_key, "-alias", "ca", "-dname", CA_NAME, *CA_EXTENSIONS, "-keystore", ca)
    tool("-exportcert", "-rfc", "-alias", "ca", "-keystore", ca, "-file", ca_pem)
    tool(*new_key, "-alias", "broker", "-dname", "CN=localhost", "-ext", SAN, "-keystore", broker)
    tool("-certreq", "-alias", "broker", "-keystore", broker, "-file", csr)
    tool(
        "-gencert",
        "-rfc",
        "-alias",
        "ca",
        "-keystore",
        ca,
        "-infile",
        csr,
        "-outfile",
        signed,
        "-ext",
        SAN,
        "-validity",
        VALID_DAYS,
    )
    tool("-importcert", "-noprompt", "-alias", "ca", "-file", ca_pem, "-keystore", broker)
    tool("-importcert", "-noprompt", "-alias", "broker", "-file", signed, "-keystore", broker)
    tool("-importcert", "-noprompt", "-alias", "ca", "-file", ca_pem, "-keystore", trust)
