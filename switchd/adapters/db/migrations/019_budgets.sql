-- Budget alerts (docs/budgets.md): each threshold of a tenant's month is raised once, by
-- whichever daemon first records it here; a restart or a second daemon finds the row and
-- stays quiet.
CREATE TABLE budget_alerts (
    tenant     text NOT NULL,
    month      date NOT NULL,                 -- first day of the budget month (UTC)
    threshold  integer NOT NULL CHECK (threshold > 0 AND threshold <= 100),
    spent      numeric(18,6) NOT NULL,
    budget     numeric(18,6) NOT NULL,
    crossed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, month, threshold)
);
