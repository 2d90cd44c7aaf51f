"""Form submissions: polling the list endpoint into outbox events, losing and repeating none."""
