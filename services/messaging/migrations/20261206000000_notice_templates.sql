-- Identity's security notices (templates password_changed and account_created) came after the
-- notifications table: its CHECK refused them, so every such notice failed with INTERNAL and
-- stayed in identity's outbox. The list now names every template code (notify::templates).
ALTER TABLE notifications DROP CONSTRAINT notifications_template_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_template_check
    CHECK (template IN ('new_message', 'appointment_reminder', 'verification_code',
                        'password_reset', 'promotion', 'password_changed', 'account_created'));
