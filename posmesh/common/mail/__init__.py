"""Transactional mail: write a mail in the transaction that causes it, a sender delivers it.

    from posmesh.common.mail import MailSender, MailTemplates, enqueue

    templates = MailTemplates(settings)
    async with engine.begin() as connection:
        ...                                  # the change that causes the mail
        await enqueue(connection, templates.password_reset(to=email, full_name=name,
                                                           token=token, valid_for=timedelta(hours=1)))

    sender = MailSender(settings, engine, "auth"); sender.start()  ...  await sender.stop()
"""

from posmesh.common.mail.message import InvalidMail, Mail
from posmesh.common.mail.outbox import channel, enqueue, mail_outbox
from posmesh.common.mail.sender import MailSender
from posmesh.common.mail.templates import MailTemplates

__all__ = ["InvalidMail", "Mail", "MailSender", "MailTemplates", "channel", "enqueue", "mail_outbox"]
