"""Alerts: a person hears about failures without watching anything (DESIGN §10).

- settings: what config.yaml says (`alerts`, `alert_on`, `alert_every`, `alert_wait`,
  `public_url`);
- messages: what an alert says, with no participant's data;
- channels: where it goes (slack, email, http);
- state: what there is to tell, in the database, shared by every process: deaths are counted
  where they are recorded, the other conditions are judged by whichever process looks first, and
  each message is composed once;
- outbox: each message, once per channel, until that channel took it;
- alerter: the thread in each process that judges, composes and sends; a failed send is
  retried later, and nothing a channel does can hold up a delivery.

This module imports nothing, so that config.py can read the settings without the rest.
"""
