# The shipped policy set's base rules (keys, roles, token caps, workspaces, services,
# fill-in-the-middle), written in Rego for the peer benchmark. Data comes from the same
# entity files, converted in benches/peer_regorus.rs.
package modelgate

import rego.v1

default allow := false

inference_actions := {"chat", "fim", "embeddings", "moderation", "ocr", "agents", "batch_jobs"}

role_tiers := {
	"analyst": {"general"},
	"developer": {"general", "code"},
	"senior": {"general", "code", "frontier"},
}

role_caps := {"analyst": 500, "developer": 2000, "senior": 4000, "admin": 8000}

key := data.keys[input.principal]

role := data.users[key.owner_user].role

model := data.models[input.model]

permit if {
	input.action in inference_actions
	role == "admin"
}

permit if {
	input.action in inference_actions
	model.tier in role_tiers[role]
}

permit if {
	input.action in inference_actions
	input.model in data.services[key.service].models
}

deny if not data.keys[input.principal]

deny if key.revoked

deny if key.expires_at_ns <= input.now_ns

deny if {
	input.action in inference_actions
	input.total_tokens > role_caps[role]
}

deny if {
	key.workspace == "dev-workspace"
	not input.model in {"mistral-small-latest", "codestral-latest"}
}

deny if {
	key.workspace == "prod-workspace"
	not key.service
}

deny if {
	input.action == "fim"
	model.family != "codestral"
}

deny if {
	input.action in inference_actions
	input.total_tokens > data.services[key.service].max_tokens_per_request
}

allow if {
	permit
	not deny
}
