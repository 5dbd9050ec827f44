-- The demo's table (the same as scripts/quickstart.sh's), created by the
-- postgres image on its first start, in database sluice as user sluice.
-- sluice's own schema (sluice.offsets, sluice.dead_letters) is created by
-- sluice itself when it starts.
create table if not exists public.orders (
    order_id     bigint primary key,
    customer     text,
    amount       numeric(12,2),
    created_at   timestamptz,
    doc          jsonb,
    kafka_offset bigint
);
