from django.db import migrations, models


class Migration(migrations.Migration):
    """Which source fills needle haystacks: chosen per dataset, recorded per run."""

    dependencies = [
        ('experiments', '0003_run_produced_method'),
    ]

    operations = [
        migrations.AddField(
            model_name='dataset',
            name='haystack_source',
            field=models.CharField(blank=True, help_text='The source whose documents fill needle haystacks, or “all”; blank = prose for the built-in corpus, every document otherwise.', max_length=100),
        ),
        migrations.AddField(
            model_name='run',
            name='haystack_source',
            field=models.CharField(blank=True, help_text="The dataset source that filled this attempt's needle haystacks (blank: no needle evaluation).", max_length=100),
        ),
    ]
