"""The staff service's entry point (`posmesh serve staff`): migrations, the database, Redis (user
events), the auth service (keys, revocations, memberships, security events), the mail sender,
the server."""

from __future__ import annotations

from pathlib import Path

from posmesh.common import clients, db, security_events
from posmesh.common.authn import remote_authenticator
from posmesh.common.admission import Admission
from posmesh.common.interceptors import server_interceptors
from posmesh.common.mail import MailSender, MailTemplates
from posmesh.common.migrations import run_migrations
from posmesh.common.redis import create_redis
from posmesh.common.server import run_grpc_service
from posmesh.common.settings import Settings
from posmesh.common.user_events import STAFF_STREAM, UserEventPublisher
from posmesh.staff.v1 import staff_pb2, staff_pb2_grpc
from services.staff.accounts import AuthAccounts
from services.staff.domain import StaffDomain
from services.staff.invitations import Invitations
from services.staff.servicer import StaffServicer
from services.staff.store import SCHEMA, StaffStore


async def serve(settings: Settings) -> None:
    await run_migrations(settings, Path(__file__).parent, SCHEMA)
    engine = db.create_engine(settings, SCHEMA)
    redis = create_redis(settings)
    auth_channel = clients.channel("auth", settings)
    auth = await remote_authenticator(settings, auth_channel)
    security_events.configure(security_events.GrpcSecurityEventSink(auth_channel, source="staff"))
    user_events = UserEventPublisher(redis, STAFF_STREAM)
    user_events.start()
    mail_sender = MailSender(settings, engine, SCHEMA)
    mail_sender.start()
    store, accounts = StaffStore(engine), AuthAccounts(auth_channel)
    invitations = Invitations(store, accounts, MailTemplates(settings), user_events, settings)
    domain = StaffDomain(store, accounts, user_events, invitations)

    def register(server) -> list[str]:
        staff_pb2_grpc.add_StaffServiceServicer_to_server(StaffServicer(domain, invitations),
                                                          server)
        return [staff_pb2.DESCRIPTOR.services_by_name["StaffService"].full_name]

    async def on_shutdown() -> None:
        await user_events.stop()
        await mail_sender.stop()
        await auth.stop()
        await security_events.flush()

    await run_grpc_service(
        "staff",
        settings,
        register=register,
        interceptors=server_interceptors(auth.authenticator, Admission.from_settings(settings)),
        engine=engine,
        redis=redis,
        revocations=auth.revocations,
        on_shutdown=on_shutdown,
    )
