from magic import Controller, contract


@contract("./contract.yaml")
class InvoiceSyncController(Controller):
    """Syncs invoice data to external billing system."""

    async def execute(self, input: dict) -> dict:
        customer_id = input["customer_id"]
        invoice_data = input["invoice_data"]

        # Database access (requires db:read capability)
        # Structured DB API — table identity enforced by contract allowlist
        customer = await self.db.query_one(
            "customers", where={"id": customer_id}
        )
        # Not in the guide, which leaves this case open: an unknown customer is an error
        # rather than an invoice synced for nobody.
        if customer is None:
            raise LookupError(f"customer {customer_id} not found")

        # HTTP egress (requires http:egress capability)
        stripe_key = await self.secrets.get("STRIPE_KEY")
        response = await self.http.post(
            "https://api.stripe.com/v1/invoices",
            json=invoice_data,
            headers={"Authorization": f"Bearer {stripe_key}"}
        )

        # Emit custom metric
        self.metrics.histogram(
            "invoice_sync_duration_seconds",
            self.elapsed_ms / 1000
        )

        return {
            "sync_id": response["id"],
            "status": "completed",
            "request_id": self.request_id
        }
