-- Billing: processor customers and payment methods (tokens only), the price list, invoices and
-- their lines, appointment events applied, payments and refunds (each an intent stored before
-- the processor is called), processor events applied.
--
-- No card number or security code is ever here (requests carrying one are refused before
-- anything is written). Processor references of a patient (customer, payment method) and the
-- card's brand, last four digits and expiry are ciphertexts under the patient's data key.
-- Amounts are integer minor units of an ISO 4217 currency.

CREATE TABLE customers (
    patient_id              uuid PRIMARY KEY,
    id                      uuid NOT NULL UNIQUE,
    processor               text NOT NULL,
    -- The processor's customer id (`cus_...`), sealed.
    processor_customer_id   bytea NOT NULL,
    create_time             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payment_methods (
    id                      uuid PRIMARY KEY,
    patient_id              uuid NOT NULL REFERENCES customers (patient_id),
    -- The processor's payment method id (`pm_...`), sealed.
    processor_method_id     bytea NOT NULL,
    -- JSON {brand, last4, exp_month, exp_year}, sealed.
    card                    bytea NOT NULL,
    is_default              boolean NOT NULL DEFAULT false,
    create_time             timestamptz NOT NULL DEFAULT now(),
    removed_time            timestamptz
);
CREATE UNIQUE INDEX payment_methods_one_default ON payment_methods (patient_id)
    WHERE is_default AND removed_time IS NULL;
CREATE INDEX payment_methods_patient ON payment_methods (patient_id, create_time)
    WHERE removed_time IS NULL;

CREATE TABLE prices (
    price_code                  text NOT NULL,
    currency                    text NOT NULL,
    amount_minor                bigint NOT NULL CHECK (amount_minor > 0),
    description                 text NOT NULL,
    late_cancellation_fee_minor bigint NOT NULL CHECK (late_cancellation_fee_minor >= 0),
    no_show_fee_minor           bigint NOT NULL CHECK (no_show_fee_minor >= 0),
    update_time                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (price_code, currency)
);

-- The last invoice number given out per year: taken under the row's lock in the transaction
-- that finalizes, so a rolled-back finalization gives its number back (gap-free).
CREATE TABLE invoice_numbers (
    year        integer PRIMARY KEY,
    last_number bigint NOT NULL
);

CREATE TABLE invoices (
    id                      uuid PRIMARY KEY,
    patient_id              uuid NOT NULL,
    -- One invoice per appointment, whatever the number of deliveries of its events.
    appointment_id          uuid UNIQUE,
    status                  text NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'void')),
    number_year             integer,
    number                  bigint,
    currency                text NOT NULL,
    total_minor             bigint NOT NULL CHECK (total_minor >= 0),
    -- Captured minus refunded: the ledger invariant `carehub billing reconcile` checks.
    amount_paid_minor       bigint NOT NULL DEFAULT 0,
    amount_refunded_minor   bigint NOT NULL DEFAULT 0 CHECK (amount_refunded_minor >= 0),
    -- When the appointment event last applied occurred (later events of an appointment win).
    appointment_event_time  timestamptz,
    create_time             timestamptz NOT NULL DEFAULT now(),
    finalize_time           timestamptz,
    paid_time               timestamptz,
    void_time               timestamptz,
    UNIQUE (number_year, number),
    CHECK ((number IS NULL) = (number_year IS NULL)),
    CHECK (status IN ('draft', 'void') OR number IS NOT NULL),
    CHECK (status <> 'draft' OR number IS NULL)
);
CREATE INDEX invoices_patient ON invoices (patient_id, create_time DESC, id DESC);
CREATE INDEX invoices_created ON invoices (create_time DESC, id DESC);

CREATE TABLE invoice_lines (
    invoice_id          uuid NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position            integer NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('visit', 'late_cancellation_fee', 'no_show_fee', 'manual')),
    price_code          text NOT NULL,
    description         text NOT NULL,
    quantity            integer NOT NULL CHECK (quantity > 0),
    unit_amount_minor   bigint NOT NULL CHECK (unit_amount_minor >= 0),
    amount_minor        bigint NOT NULL CHECK (amount_minor >= 0),
    PRIMARY KEY (invoice_id, position)
);

-- Scheduling's appointment events, each applied once (by event id).
CREATE TABLE appointment_events (
    event_id        text PRIMARY KEY,
    appointment_id  uuid NOT NULL,
    kind            text NOT NULL,
    applied_time    timestamptz NOT NULL DEFAULT now()
);

-- A payment is stored (pending, leased to the call that made it) before the processor is
-- called; the processor's idempotency key is derived from its id.
CREATE TABLE payments (
    id                      uuid PRIMARY KEY,
    -- The caller's idempotency scope and key, and a hash of the request they were first used
    -- with (ids and an amount: no personal data).
    actor                   text NOT NULL,
    idempotency_key         text NOT NULL,
    request_hash            bytea NOT NULL,
    invoice_id              uuid NOT NULL REFERENCES invoices (id),
    patient_id              uuid NOT NULL,
    payment_method_id       uuid NOT NULL REFERENCES payment_methods (id),
    currency                text NOT NULL,
    amount_minor            bigint NOT NULL CHECK (amount_minor > 0),
    status                  text NOT NULL
        CHECK (status IN ('pending', 'processing', 'requires_action', 'succeeded', 'failed')),
    failure_code            text,
    processor               text NOT NULL,
    processor_payment_id    text,
    captured_minor          bigint NOT NULL DEFAULT 0 CHECK (captured_minor >= 0),
    refunded_minor          bigint NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    -- The call (or reconciler) that owns the intent until then; NULL once settled.
    locked_until            timestamptz,
    -- The processor event time of the state applied last (older events do not win).
    status_event_created    bigint,
    create_time             timestamptz NOT NULL DEFAULT now(),
    update_time             timestamptz NOT NULL DEFAULT now(),
    succeeded_time          timestamptz,
    UNIQUE (actor, idempotency_key),
    CHECK (refunded_minor <= captured_minor),
    CHECK (captured_minor <= amount_minor)
);
CREATE INDEX payments_invoice ON payments (invoice_id);
CREATE INDEX payments_patient ON payments (patient_id, create_time);
CREATE INDEX payments_unsettled ON payments (locked_until) WHERE status = 'pending';
CREATE UNIQUE INDEX payments_processor_payment ON payments (processor_payment_id)
    WHERE processor_payment_id IS NOT NULL;

CREATE TABLE refunds (
    id                      uuid PRIMARY KEY,
    actor                   text NOT NULL,
    idempotency_key         text NOT NULL,
    request_hash            bytea NOT NULL,
    payment_id              uuid NOT NULL REFERENCES payments (id),
    invoice_id              uuid NOT NULL REFERENCES invoices (id),
    patient_id              uuid NOT NULL,
    currency                text NOT NULL,
    amount_minor            bigint NOT NULL CHECK (amount_minor > 0),
    reason                  text NOT NULL,
    status                  text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_code            text,
    processor_refund_id     text,
    locked_until            timestamptz,
    status_event_created    bigint,
    create_time             timestamptz NOT NULL DEFAULT now(),
    update_time             timestamptz NOT NULL DEFAULT now(),
    succeeded_time          timestamptz,
    UNIQUE (actor, idempotency_key)
);
CREATE INDEX refunds_payment ON refunds (payment_id);
CREATE INDEX refunds_patient ON refunds (patient_id, create_time);
CREATE INDEX refunds_unsettled ON refunds (locked_until) WHERE status = 'pending';
CREATE UNIQUE INDEX refunds_processor_refund ON refunds (processor_refund_id)
    WHERE processor_refund_id IS NOT NULL;

-- Processor events (webhooks), each applied once (by the processor's event id).
CREATE TABLE processor_events (
    event_id        text PRIMARY KEY,
    kind            text NOT NULL,
    created         bigint NOT NULL,
    -- What applying it did: `applied`, `stale` (an older state than the one stored),
    -- `unknown` (an object billing did not make), `ignored` (a type billing does not act on).
    outcome         text NOT NULL,
    received_time   timestamptz NOT NULL DEFAULT now()
);
