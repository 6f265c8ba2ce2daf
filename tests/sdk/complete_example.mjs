// The seed platform's Complete Example: generate with square_hd and guidance_scale, then an
// image-to-image of the first result, through @sapiom/fetch (SERVICE_URL: the gateway).
import { createFetch } from "@sapiom/fetch";

const sapiomFetch = createFetch({ apiKey: process.env.SAPIOM_API_KEY, agentName: "my-agent" });
const service = process.env.SERVICE_URL;

async function run(endpoint, input) {
  const response = await sapiomFetch(`${service}/v1/run/${endpoint}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(input),
  });
  if (!response.ok) {
    throw new Error(`${endpoint}: HTTP ${response.status} ${await response.text()}`);
  }
  return response.json();
}

const generated = await run("fal-ai/flux/dev", {
  prompt: "a lighthouse on a cliff at dawn",
  image_size: "square_hd",
  guidance_scale: 3.5,
});
console.log(generated.images[0].url);

const transformed = await run("fal-ai/flux/dev/image-to-image", {
  prompt: "the same lighthouse as a watercolor",
  image_url: generated.images[0].url,
  strength: 0.8,
});
console.log(transformed.images[0].url);
