# Aliases can be removed: the audit trail keeps each entry's alias name, and outlives the alias.

import django.db.models.deletion
from django.db import migrations, models


def fill_alias_names(apps, schema_editor):
    ModelAliasChange = apps.get_model("classifier", "ModelAliasChange")
    for change in ModelAliasChange.objects.select_related("alias").iterator():
        change.alias_name = change.alias.name
        change.save(update_fields=["alias_name"])


class Migration(migrations.Migration):

    dependencies = [
        ('classifier', '0003_registry_evaluations_aliases'),
    ]

    operations = [
        migrations.AddField(
            model_name='modelaliaschange',
            name='alias_name',
            field=models.SlugField(default='', max_length=40),
            preserve_default=False,
        ),
        migrations.RunPython(fill_alias_names, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='modelaliaschange',
            name='alias',
            field=models.ForeignKey(blank=True, help_text='Empty once the alias was removed; a later promotion starts a new alias.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='changes', to='classifier.modelalias'),
        ),
        migrations.AlterField(
            model_name='modelaliaschange',
            name='action',
            field=models.CharField(choices=[('promote', 'Promote'), ('rollback', 'Roll back'), ('remove', 'Remove')], max_length=10),
        ),
    ]
