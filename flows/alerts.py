"""Alerts: Prefect automations that turn failures and drift into webhook notifications.

Nobody watches the UI all day, so the server itself tells someone. :func:`ensure_alerts` saves one notification
block (Prefect's generic *Custom Webhook*: a JSON POST to any http(s) URL, a loopback one included, with
``text`` for Slack-style receivers and ``subject``/``body`` for the rest) and one automation per thing worth
telling:

- ``reviewflow: flow run failed`` -- a run of any reviewflow flow entered Failed or Crashed;
- ``reviewflow: drift detected`` -- the event :data:`DRIFT_EVENT` that a drifted scoring run emits
  (``flows/drift.py``; resource ``reviewflow.table.<table>``, related ``reviewflow.model.<version>``);
- ``reviewflow: inbox file failed`` -- the event :data:`INBOX_EVENT` an inbox pass emits when a file went to
  ``inbox/failed/`` (:func:`emit_inbox_failures`): the pass itself completes, so no flow-run state says so.

The triggers are evaluated by the server's *triggers* service and the notification is sent by its *actions*
service; ``prefect server start`` runs both by default. Everything is found again by name and updated in place,
so ``reviewflow server`` can run this at every start without piling up duplicates.
"""

from __future__ import annotations

from typing import Iterable

BLOCK_NAME = "reviewflow-alerts"
DRIFT_EVENT = "reviewflow.drift.detected"      # the same string as flows.drift.EVENT (a test holds them equal)
INBOX_EVENT = "reviewflow.inbox.file-failed"
# the @flow(name=...) of every flow in flows/ (tests/test_alerts.py checks that none is missing)
FLOW_NAMES = ("ingest", "prepare", "reviewflow-train", "reviewflow-pretrain", "score", "score-distributed",
              "inbox", "reviewflow-run")
# what the webhook receives: Prefect fills {{subject}} and {{body}} in (the automation's rendered templates)
WEBHOOK_JSON = {"text": "{{subject}}\n{{body}}", "subject": "{{subject}}", "body": "{{body}}",
                "source": "reviewflow"}

_FLOW_RUN_BODY = ("Flow run {{ flow_run.name }} of flow {{ flow.name }} entered {{ flow_run.state.name }}: "
                  "{{ flow_run.state.message }}\nFlow run id: {{ flow_run.id }}")
_DRIFT_BODY = ("Drift on table {{ event.resource['prefect.resource.name'] }} scored with model "
               "{{ event.related[0]['prefect.resource.name'] }}: {{ event.payload.metrics }}\n"
               "Run {{ event.payload.run_id }} in {{ event.payload.db_path }}. "
               "See `reviewflow monitor --table {{ event.resource['prefect.resource.name'] }}`.")
_INBOX_BODY = ("Inbox file {{ event.resource['prefect.resource.name'] }} failed and was moved to "
               "{{ event.payload.moved_to }}: {{ event.payload.error }}\n"
               "Fix it and run `reviewflow inbox retry {{ event.resource['prefect.resource.name'] }}`.")


def automation_specs(block_id) -> list:
    """The reviewflow automations (``AutomationCore``), each sending its notification through ``block_id``."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    def alert(name: str, description: str, trigger: EventTrigger, subject: str, body: str) -> AutomationCore:
        return AutomationCore(name=name, description=description, enabled=True, trigger=trigger,
                              actions=[SendNotification(block_document_id=block_id, subject=subject, body=body)])

    failed = EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                          match={"prefect.resource.id": "prefect.flow-run.*"},
                          match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(FLOW_NAMES)},
                          for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1)
    drift = EventTrigger(expect={DRIFT_EVENT}, match={"prefect.resource.id": "reviewflow.table.*"},
                         for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1)
    inbox = EventTrigger(expect={INBOX_EVENT}, match={"prefect.resource.id": "reviewflow.inbox.file.*"},
                         for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1)
    return [
        alert("reviewflow: flow run failed", "A reviewflow flow run entered Failed or Crashed.", failed,
              "reviewflow: flow run {{ flow_run.name }} {{ flow_run.state.name }}", _FLOW_RUN_BODY),
        alert("reviewflow: drift detected", f"A scoring run emitted {DRIFT_EVENT}.", drift,
              "reviewflow: drift on {{ event.resource['prefect.resource.name'] }}", _DRIFT_BODY),
        alert("reviewflow: inbox file failed", f"An inbox pass emitted {INBOX_EVENT}.", inbox,
              "reviewflow: inbox file {{ event.resource['prefect.resource.name'] }} failed", _INBOX_BODY),
    ]


async def save_webhook_block(client, url: str, name: str = BLOCK_NAME):
    """Save (or overwrite) the notification block that POSTs :data:`WEBHOOK_JSON` to ``url``; returns its id."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if not url.startswith(("http://", "https://")):
        from pipeline.core.errors import InputError

        raise InputError(f"alert webhook URL must start with http:// or https://, got {url!r}")
    # the URL goes in as a secret (webhook URLs often carry a token): the UI and the API show it masked
    block = CustomWebhookNotificationBlock(name=name, url="{{webhook_url}}", secrets={"webhook_url": url},
                                           method="POST", json_data=WEBHOOK_JSON)
    return await block.asave(name, overwrite=True, client=client)


async def ensure_alerts(client, url: str) -> list[str]:
    """Create or update the notification block and the automations on the server ``client`` talks to.

    Idempotent: an automation is found by name and updated in place (extra copies of one name are deleted).
    Returns the automations' names."""
    block_id = await save_webhook_block(client, url)
    names = []
    for spec in automation_specs(block_id):
        existing = await client.read_automations_by_name(spec.name)
        if existing:
            await client.update_automation(existing[0].id, spec)
            for extra in existing[1:]:
                await client.delete_automation(extra.id)
        else:
            await client.create_automation(spec)
        names.append(spec.name)
    return names


def setup_alerts(api_url: str, url: str) -> list[str]:
    """:func:`ensure_alerts` against the server at ``api_url`` (for `reviewflow server` / `serve`)."""
    import asyncio

    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api_url) as client:
            return await ensure_alerts(client, url)

    return asyncio.run(go())


def emit_inbox_failures(results: Iterable[dict], dataset: str) -> int:
    """Emit :data:`INBOX_EVENT` once per file of an inbox pass that failed (``results``: the inbox flow's rows,
    ``{"file", "status", "moved_to", "error"}``). Returns how many were emitted."""
    from prefect.events import emit_event

    n = 0
    for r in results:
        if r.get("status") != "failed":
            continue
        emit_event(event=INBOX_EVENT,
                   resource={"prefect.resource.id": f"reviewflow.inbox.file.{r['file']}",
                             "prefect.resource.name": r["file"]},
                   related=[{"prefect.resource.id": f"reviewflow.dataset.{dataset}",
                             "prefect.resource.role": "dataset", "prefect.resource.name": dataset}],
                   payload={"moved_to": r.get("moved_to"), "error": r.get("error"), "dataset": dataset})
        n += 1
    return n
