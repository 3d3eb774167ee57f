// Hardhat 3 configuration: compiles contracts/ with the pinned solcjs from node_modules,
// offline, with the same settings as `fedchain compile` (fedchain/eth/compile.py).
// Hardhat 3 needs Node >= 22.13: run it with the project-local Node 24, e.g.
//   node_modules/node/bin/node node_modules/hardhat/dist/src/cli.js compile
import { fileURLToPath } from "node:url";

const solcjs = fileURLToPath(new URL("./node_modules/solc/soljson.js", import.meta.url));

export default {
  solidity: {
    version: "0.8.28",
    path: solcjs,
    settings: {
      optimizer: { enabled: true, runs: 200 },
      viaIR: true,
      evmVersion: "paris",
    },
  },
  paths: {
    sources: "./contracts",
    cache: "./cache",
    artifacts: "./artifacts",
  },
};
