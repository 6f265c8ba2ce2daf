// The seed platform's Quick Example, as its users write it: @sapiom/fetch in front of the image
// service. Only the service's address comes from the environment (SERVICE_URL: the gateway).
import { createFetch } from "@sapiom/fetch";

const sapiomFetch = createFetch({ apiKey: process.env.SAPIOM_API_KEY, agentName: "my-agent" });
const response = await sapiomFetch(`${process.env.SERVICE_URL}/v1/run/fal-ai/flux/dev`, {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify({ prompt: "a red fox in the snow", image_size: "landscape_4_3" }),
});
const data = await response.json();
console.log(data.images[0].url);
