# How much Dice the working grid alone costs: a perfect predictor on the working grid
# (the true labels, or their class fractions per working voxel) brought back to the
# input grid by nearest-neighbour labels or by trilinear class probabilities + argmax.
# An outside measurement (numpy, scipy, nibabel); nothing in rlu2net uses it.
#   python bench/resolution_ceiling.py DATA 2 3 4
import sys, glob, numpy as np, nibabel as nib
from scipy.ndimage import map_coordinates, uniform_filter
VALUES=[0,205,420,500,550,600,820,850]
LUT=np.zeros(1000,np.int64)
for i,v in enumerate(VALUES): LUT[v]=i
def dice(a,b):
    out=[]
    for k in range(1,8):
        x,y=a==k,b==k; s=x.sum()+y.sum()
        if s: out.append(2*(x&y).sum()/s)
    return np.mean(out)
root=sys.argv[1]
for t in map(float,sys.argv[2:]):
    res={}
    for mod in ("ct","mr"):
        dn,ds=[],[]
        for p in sorted(glob.glob(f"{root}/{mod}_test/*_label.nii*"))[:4]:
            img=nib.as_closest_canonical(nib.load(p)); sp=np.array(img.header.get_zooms()[:3])
            lab=LUT[np.rint(np.asarray(img.dataobj)).astype(np.int64)]
            sh=np.array(lab.shape); ws=np.maximum(np.rint(sh*sp/t).astype(int),1)
            wg=np.meshgrid(*[np.minimum(np.arange(ws[a])*t/sp[a],sh[a]-1) for a in range(3)],indexing="ij")
            og=np.meshgrid(*[np.minimum(np.arange(sh[a])*sp[a]/t,ws[a]-1) for a in range(3)],indexing="ij")
            # nearest down, nearest up
            wl=lab[tuple(np.rint(g).astype(int) for g in wg)]
            up=wl[tuple(np.rint(g).astype(int) for g in og)]
            dn.append(dice(up,lab))
            # class fractions (box of the working voxel), trilinear up, argmax
            size=np.maximum(np.rint(t/sp).astype(int),1)
            best=np.full(lab.shape,-1.0,np.float32); arg=np.zeros(lab.shape,np.uint8)
            for k in range(8):
                f=uniform_filter((lab==k).astype(np.float32),size=size,mode="nearest")
                w=map_coordinates(f,wg,order=1,mode="nearest")
                u=map_coordinates(w,og,order=1,mode="nearest")
                m=u>best; best[m]=u[m]; arg[m]=k
            ds.append(dice(arg,lab))
        res[mod]=(np.mean(dn),np.mean(ds))
    print(f"t={t} mm: CT nearest {res['ct'][0]:.4f} soft {res['ct'][1]:.4f} | MRI nearest {res['mr'][0]:.4f} soft {res['mr'][1]:.4f}",flush=True)
