"""Timing probe of hatac eval pieces on SmolLM2 (CPU): one document of 2,048 tokens, dense and four policies at
budget 1/32 (random W, r 128), and 2 passkey trials. Used to size the sweep in docs/ACCURACY.md."""
import time, torch, random
torch.set_num_threads(2)
from hatac import artifact
from hatac.data.assets import smollm2_dir
from hatac.evaluation.session import EvalModel
from hatac.evaluation.policies import Oracle, HashPolicy, Quest, StreamingLLM
from hatac.evaluation.perplexity import document_nll
from hatac.evaluation.passkey import PasskeyBuilder, run_depth, random_key
from hatac.texts import eval_documents
from hatac.calibration import random_weights
t=time.time()
model, tok = artifact.load_source_model(str(smollm2_dir()), torch.device("cpu"), None)
em = EvalModel(model, dense_layers=2)
print("setup", time.time()-t, flush=True)
docs = eval_documents(tok, 2048, 2048, n=2)
print("docs", [(d.name, len(d)) for d in docs], flush=True)
d = docs[0]
t=time.time(); print(document_nll(em, d.ids, None, 0, 1024), "dense", time.time()-t, flush=True)
w = random_weights(em.shape.hashed_layers, 3, 64, 128, 0)
for pol in (Oracle(), HashPolicy(w), Quest(16), StreamingLLM(4)):
    t=time.time(); a,n = document_nll(em, d.ids, pol, 1/32, 1024); print(pol.name, "ppl", torch.tensor(a/n).exp().item(), time.time()-t, flush=True)
b = PasskeyBuilder(tok)
t=time.time()
res = run_depth(em, b, 2048, 0.5, [random_key(random.Random(i)) for i in range(2)], {"oracle": Oracle(), "random": HashPolicy(w)}, [1/32], None)
print("passkey 2 trials x 2 pol", time.time()-t, res, flush=True)
