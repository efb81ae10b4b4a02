"""Attempt history and the whole log of a run (issue 15); runs claimed before it get their one known attempt,
and the log tail they kept becomes that attempt's log (only the tail was stored until now)."""

import django.db.models.deletion
from django.db import migrations, models


def backfill(apps, schema_editor):
    Run = apps.get_model("experiments", "Run")
    RunAttempt = apps.get_model("experiments", "RunAttempt")
    RunLogChunk = apps.get_model("experiments", "RunLogChunk")
    attempts, chunks = [], []
    for run in Run.objects.filter(started_at__isnull=False).iterator(chunk_size=2000):
        attempts.append(RunAttempt(run_id=run.pk, number=run.attempt, task_id=run.uuid, worker=run.worker,
                                   queued_at=run.queued_at, started_at=run.started_at, finished_at=run.finished_at,
                                   outcome=run.status, error=run.error))
        if run.log_tail:
            chunks.append(RunLogChunk(run_id=run.pk, attempt=run.attempt, text=run.log_tail))
    RunAttempt.objects.bulk_create(attempts, batch_size=2000)
    RunLogChunk.objects.bulk_create(chunks, batch_size=2000)


class Migration(migrations.Migration):

    dependencies = [
        ('experiments', '0005_run_protocol'),
    ]

    operations = [
        migrations.CreateModel(
            name='RunAttempt',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('number', models.PositiveIntegerField(help_text="The run's ``attempt`` when it was claimed.")),
                ('task_id', models.UUIDField(db_index=True, help_text="The run's uuid during this attempt (its Celery task id).")),
                ('worker', models.CharField(blank=True, max_length=200)),
                ('queued_at', models.DateTimeField(blank=True, null=True)),
                ('started_at', models.DateTimeField()),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('outcome', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='running', max_length=10)),
                ('error', models.TextField(blank=True)),
                ('traceback', models.TextField(blank=True, help_text="Shown to the team's members and admins, not to viewers.")),
                ('run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='attempts', to='experiments.run')),
            ],
            options={
                'ordering': ['run', 'number'],
                'constraints': [models.UniqueConstraint(fields=('run', 'number'), name='one_attempt_row_per_number')],
            },
        ),
        migrations.CreateModel(
            name='RunLogChunk',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('attempt', models.PositiveIntegerField()),
                ('text', models.TextField()),
                ('run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='log_chunks', to='experiments.run')),
            ],
            options={
                'ordering': ['id'],
                'indexes': [models.Index(fields=['run', 'attempt', 'id'], name='run_log_chunk_order')],
            },
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
