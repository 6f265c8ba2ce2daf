// One governed call that the rules refuse: prints the SDK's error name (or the HTTP status it got).
import { createFetch } from "@sapiom/fetch";

const sapiomFetch = createFetch({ apiKey: process.env.SAPIOM_API_KEY, agentName: "my-agent" });
try {
  const response = await sapiomFetch(`${process.env.SERVICE_URL}/v1/run/fal-ai/flux/dev`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: "a red fox in the snow" }),
  });
  console.log(`status ${response.status}`);
} catch (error) {
  console.log(`error ${error.name}`);
}
